"""Where a conversion goes, and how it gets there without losing anyone's data.

ftprefix owns only what it writes in `--out`: `<tp>-gpu` directories of conversions (recognised by
their config.ini), its lock file and its own staging directories (`layout.STAGING_RE`). Anything
else there is the user's: convert refuses to write next to it, and `--force` replaces only the
`<tp>-gpu` directory being converted, after checking it holds nothing ftprefix did not write.
Symlinks are never followed for deletion (they count as foreign).

A conversion is written into `.<tp>-gpu.tmp-XXXX` beside its target and renamed into place at the
end; a replaced one is first renamed to `.<tp>-gpu.old-XXXX` and removed last. A killed conversion
leaves only those names, which the next conversion into the same directory cleans up (restoring a
replaced conversion whose successor never made it into place).
"""

from __future__ import annotations

import configparser
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ftprefix import layout
from ftprefix.errors import UserError


def is_conversion(path: Path) -> bool:
    """A real `<tp>-gpu` directory whose config.ini FT's GPT-NeoX would read."""
    if path.is_symlink() or not path.is_dir() or not layout.FT_DIR_RE.match(path.name):
        return False
    config = path / layout.CONFIG_FILE
    if config.is_symlink() or not config.is_file():
        return False
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(config.read_text(encoding="utf-8"))
    except (configparser.Error, OSError, UnicodeDecodeError):
        return False
    return parser.has_section(layout.SECTION)


def _is_ours(entry: Path) -> bool:
    if entry.name == layout.LOCK_FILE:
        return entry.is_file() and not entry.is_symlink()
    if layout.STAGING_RE.match(entry.name):
        return entry.is_dir() and not entry.is_symlink()
    return is_conversion(entry)


def foreign_entry(directory: Path, owned: Callable[[Path], bool]) -> Path | None:
    """The first entry of `directory` (sorted) that `owned` does not accept."""
    for entry in sorted(directory.iterdir()):
        if not owned(entry):
            return entry
    return None


def _is_ft_file(entry: Path) -> bool:
    return bool(layout.FT_FILE_RE.match(entry.name)) and entry.is_file() and not entry.is_symlink()


def check_output(out: Path, tp: int, *, force: bool, inputs: list[Path]) -> None:
    """Refuse an output that holds anything but ftprefix conversions, an existing conversion for
    `tp` without --force, and an output that would swallow an input."""
    layout.check_creatable(out, "--out")
    resolved = os.path.realpath(out)
    inside = resolved.rstrip(os.sep) + os.sep
    real_dirs: dict[str, str] = {}  # thousands of prefixes in a few directories: each resolved once
    for src in inputs:
        src_resolved = _realpath(os.fspath(src), real_dirs)
        if src_resolved == resolved or src_resolved.startswith(inside):
            raise UserError(f"--out {out} contains the input {src}; choose another output directory")
    if not out.exists():
        return
    foreign = foreign_entry(out, _is_ours)
    if foreign is not None:
        raise UserError(
            f"--out {out} holds {foreign.name}, which is not an ftprefix conversion; ftprefix writes "
            "only <tp>-gpu directories there and leaves other files alone: choose another --out"
        )
    target = layout.ft_dir(out, tp)
    if target.exists():
        if not force:
            raise UserError(f"{target} already holds a conversion; pass --force to replace it")
        inside = foreign_entry(target, _is_ft_file)
        if inside is not None:
            raise UserError(
                f"{target} holds {inside.name}, which ftprefix did not write; --force replaces only "
                "what a conversion wrote: move it out first"
            )


def _realpath(path: str, real_dirs: dict[str, str]) -> str:
    """os.path.realpath(path), its directory's taken from `real_dirs` where resolved before
    (a path that is itself a link, or ends in `..`, is resolved whole)."""
    directory, name = os.path.split(path)
    if not name or name in (".", "..") or os.path.islink(path):
        return os.path.realpath(path)
    real = real_dirs.get(directory)
    if real is None:
        real = real_dirs[directory] = os.path.realpath(directory or ".")
    return os.path.join(real, name)


def clean_stale(out: Path, report: Callable[[str], None]) -> None:
    """Remove staging directories of killed conversions; restore a conversion that a killed one had
    set aside. Call with the model lock held: then no conversion is running."""
    for entry in sorted(out.iterdir()):
        match = layout.STAGING_RE.match(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        target = layout.ft_dir(out, int(match.group(1)))
        if match.group(2) == "old" and not target.exists():
            os.replace(entry, target)
            report(f"restored {target} from {entry.name}, set aside by an interrupted conversion")
            continue
        shutil.rmtree(entry)
        report(f"removed {entry.name}, left by an interrupted conversion")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_directory(parent: Path, prefix: str) -> Path:
    """An empty directory of a name no other has, with the mode any new directory gets (0o777 less
    the umask), which it keeps as the conversion: mkdtemp's would be private (0o700)."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


@contextmanager
def staged_ft_dir(out: Path, tp: int) -> Iterator[Path]:
    """Yield an empty staging directory that becomes `<out>/<tp>-gpu` on success (an existing one is
    removed only after the new one is in place); on failure it is deleted."""
    staging = _new_directory(out, f".{tp}-gpu.tmp-")
    try:
        yield staging
        target = layout.ft_dir(out, tp)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{tp}-gpu.old-", dir=out))
            os.replace(target, old)
        os.replace(staging, target)
        _fsync_dir(out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
