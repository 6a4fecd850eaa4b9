"""Which tokenizer a model directory holds, chosen as `AutoTokenizer.from_pretrained(dir, use_fast=False)`
would for the SentencePiece classes rinna's and LINE's models name, and as the fast tokenizer for
everything that ships a `tokenizer.json` (GPT-NeoX, Pythia)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ftprefix.model_dirs import download_hint, hf_dir
from ftprefix.text.base import Tokenizer
from ftprefix.text.files import CONFIG_FILE, JSON_FILE, TokenizerError, read_files
from ftprefix.text.json_tokenizer import JsonTokenizer
from ftprefix.text.sentencepiece_slow import FLAVOURS, is_sentencepiece_class, sentencepiece_tokenizer

# Files `ftprefix triton-repo` copies next to the preprocessing / postprocessing models.
TOKENIZER_FILES = (
    JSON_FILE,
    CONFIG_FILE,
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    *(f.model_file for f in FLAVOURS.values()),
)


def copy_tokenizer_files(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """The tokenizer files of a model directory (TOKENIZER_FILES; no weights) copied into `dest`."""
    target = Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, target / name)
    return target


def load_tokenizer(directory: str | os.PathLike[str], *, newline_token: str | None = None) -> Tokenizer:
    """The tokenizer of a Hugging Face model directory (or a `tokenizer.json` file), or TokenizerError.

    A class name ending in "Fast" with a `tokenizer.json` beside it is read from that file; the
    slow T5Tokenizer / LlamaTokenizer (rinna's `use_fast=False`) from their SentencePiece model;
    any other class from `tokenizer.json`. What cannot be read exactly is refused."""
    path = Path(directory)
    if path.is_file() and path.name == JSON_FILE:
        return JsonTokenizer(read_files(path.parent), path, newline_token)
    path = hf_dir(str(path))  # a Hub id in the local cache: its snapshot
    if not path.is_dir():
        raise TokenizerError(
            f"tokenizer directory {path} does not exist; pass the Hugging Face model directory"
            + download_hint(path)
        )
    files = read_files(path)
    name = files.tokenizer_class
    has_json = files.has(JSON_FILE)
    if is_sentencepiece_class(name) and not (name and name.endswith("Fast") and has_json):
        assert name is not None
        return sentencepiece_tokenizer(files, name.removesuffix("Fast"), newline_token)
    if has_json:
        return JsonTokenizer(files, path / JSON_FILE, newline_token)
    if name is not None:
        raise TokenizerError(
            f"{path / CONFIG_FILE} names {name} and {path} has no {JSON_FILE}; ftprefix reads {JSON_FILE} "
            f"or a SentencePiece model with {' / '.join(FLAVOURS)}: save the tokenizer with "
            "save_pretrained from a fast tokenizer to write one"
        )
    raise TokenizerError(
        f"{path} holds no tokenizer ftprefix can read ({JSON_FILE}, or spiece.model / tokenizer.model "
        f"named by {CONFIG_FILE}); pass the Hugging Face model directory"
    )
