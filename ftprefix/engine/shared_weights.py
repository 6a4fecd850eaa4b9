"""The base weights as the engine computes with them, written once for every engine process of a
server to map: the CPU server's instances, and the new instances of a reload.

Read by each instance, the weights were a float32 copy per process: N instances held the model N
times, and a reload (`tasks add` while serving), whose new instances start while the old ones still
answer, 2N times. Mapped from one file, the pages are the page cache's, held once however many
processes map them, and clean: under memory pressure the kernel can drop them and read them again
rather than kill an instance.

The copy is FT's own layout for tp 1 and fp32 (`layout`), every value as the engine uses it: fp16
widened exactly, rank files joined, and the bias sum that FT stores divided by tp multiplied back
(exact: tp is a power of two). A tp-1 fp32 conversion is that already and is mapped as it is.
`source.json` holds the size and time of each base file the copy was made from: a conversion
replaced under a running server (`convert --force`) is not answered from a stale copy.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from ftprefix import layout

SOURCE_FILE = "source.json"


def mapped_config(cfg: layout.ModelConfig) -> layout.ModelConfig:
    """The config that describes the copy's files: `cfg` at tp 1 in fp32."""
    return replace(cfg, tensor_para_size=1, weight_data_type="fp32")


def needs_copy(cfg: layout.ModelConfig) -> bool:
    """Whether the conversion's own files cannot be mapped as the engine uses them."""
    return cfg != mapped_config(cfg)


def _sources(ft_dir: Path, cfg: layout.ModelConfig) -> dict[str, list[int]]:
    found = {}
    for spec in layout.base_tensors(cfg):
        for name in spec.file_names(cfg.tensor_para_size):
            stat = (ft_dir / name).stat()
            found[name] = [stat.st_size, stat.st_mtime_ns]
    return found


def write(ft_dir: str | os.PathLike[str], cfg: layout.ModelConfig, out: str | os.PathLike[str]) -> int:
    """Write the copy of `ft_dir`'s base weights into the directory `out` (replacing one there: its
    files stay readable to the processes that map them) and return its bytes. A failed write (a
    full disk) leaves no partial copy and raises the OSError."""
    source, target = Path(ft_dir), Path(out)
    if target.resolve() == source.resolve():  # replaced below: never the conversion itself
        raise ValueError(f"the copy of {source}'s weights cannot replace it")
    staging, old = target.with_name(target.name + ".partial"), target.with_name(target.name + ".old")
    for leftover in (staging, old):  # of a write that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir(parents=True)
    written = 0
    try:
        sources = _sources(source, cfg)
        for spec in layout.base_tensors(cfg):
            values = layout.read_tensor(source, spec, cfg).astype(np.float32)
            if spec.divide_by_tp:
                values *= cfg.tensor_para_size
            (name,) = spec.file_names(1)
            layout.write_array(staging / name, values)
            written += values.nbytes
        (staging / SOURCE_FILE).write_text(json.dumps(sources), encoding="utf-8")
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


def current(shared: Path, ft_dir: Path, cfg: layout.ModelConfig) -> bool:
    """Whether `shared` holds the copy of `ft_dir`'s base weights as they are now."""
    try:
        made_from = json.loads((shared / SOURCE_FILE).read_text(encoding="utf-8"))
        return bool(made_from == _sources(ft_dir, cfg))
    except (OSError, ValueError):
        return False


def mapped_from(shared: Path, ft_dir: Path, cfg: layout.ModelConfig) -> Path | None:
    """Where an engine maps `ft_dir`'s base weights from (files of `mapped_config(cfg)`): the
    conversion itself where it needs no copy, else the copy in `shared` while it is current; None
    where they are to be read."""
    if not needs_copy(cfg):
        return ft_dir
    return shared if current(shared, ft_dir, cfg) else None
