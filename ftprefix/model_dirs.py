"""What a `--model` or `--tokenizer` value names: a directory, or a Hugging Face Hub model id
(`ORG/NAME`) already in the local Hugging Face cache, as transformers' `from_pretrained` reads
both. Nothing is downloaded here: `hf download ORG/NAME` fills the cache (a model of many GB is
not fetched behind a converter's back), and a model that is not there is named with that command.

The cache's layout is huggingface_hub's (`HF_HUB_CACHE`, by default ~/.cache/huggingface/hub):
`models--ORG--NAME/snapshots/REVISION/` holds the files, and `refs/main` names the revision.
"""

from __future__ import annotations

import re
from pathlib import Path

# huggingface_hub's rule for a repo id, in short: ORG/NAME of letters, digits, '-', '_', '.'
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_CACHED_REPO = re.compile(r"models--[^/]+--([^/]+)")


def looks_like_hub_id(value: str | Path) -> bool:
    """Whether a value that is no path here could be a Hub model id (ORG/NAME)."""
    text = str(value)
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text and "--" not in text and not Path(text).exists()


def cached_snapshot(repo_id: str) -> Path | None:
    """The directory of the cached snapshot of Hub model `repo_id` (its main revision), or None."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # a dependency of tokenizers; absent only in an unusual environment
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (OSError, ValueError):  # not in the cache, or not an id after all
        return None


def hf_dir(value: str) -> Path:
    """argparse type of --model and --tokenizer: the path as given, unless it does not exist and
    names a Hub model in the local cache; then that model's snapshot directory."""
    if looks_like_hub_id(value):
        snapshot = cached_snapshot(value)
        if snapshot is not None:
            return snapshot
    return Path(value)


def download_hint(value: str | Path) -> str:
    """What to add to "X does not exist" where X could be a Hub model id that is not cached."""
    if not looks_like_hub_id(value):
        return ""
    return f"; a Hugging Face model id is read from the local cache: download it with `hf download {value}`"


def model_name(directory: Path) -> str:
    """The name a model directory goes by: its own name, or NAME for a snapshot of Hub model
    ORG/NAME in the cache (whose own name is a commit hash), as a download to a directory of its
    own (`hf download ORG/NAME --local-dir NAME`) would be named."""
    resolved = directory.resolve()
    repo = _CACHED_REPO.fullmatch(resolved.parent.parent.name)
    if resolved.parent.name == "snapshots" and repo:
        return repo.group(1)
    return resolved.name
