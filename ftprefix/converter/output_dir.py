"""Write a whole output directory into a temporary sibling and rename it into place at the end, so a
conversion that fails midway never leaves a directory that looks complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ftprefix.errors import UserError


def check_output(out: Path, *, force: bool, inputs: list[Path]) -> None:
    """Refuse an existing output without --force, and an output that would swallow an input."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.exists() and not force:
        raise UserError(f"output directory {out} already exists; pass --force to replace it")
    resolved = out.resolve()
    for src in inputs:
        src_resolved = src.resolve()
        if src_resolved == resolved or resolved in src_resolved.parents:
            raise UserError(f"--out {out} contains the input {src}; choose another output directory")


@contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """Yield an empty `<out>.tmp-XXXX` sibling; on success it replaces `out` (any old `out` is removed
    only after the new one is in place), on failure it is deleted."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the result is an ordinary directory
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(staging, out)
            shutil.rmtree(old)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
