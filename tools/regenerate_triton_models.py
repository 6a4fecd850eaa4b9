"""Rewrite `triton_models/` (the example GPU model repository) with the current generator.

    .venv/bin/python tools/regenerate_triton_models.py

The example conversion: tp 2, fp16, tasks `smileface` (10) and `summary` (16); the model
repository of the deployment `ftprefix triton-repo` writes for it, without the copied tokenizer
files. tests/test_triton_repo.py checks the directory matches.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from pathlib import Path

from ftprefix import layout
from ftprefix.cli import main
from ftprefix.demo.toy import build_tokenizer
from ftprefix.serving.deployment import REPOSITORY_DIR
from ftprefix.task_table import TaskTable

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_TASKS = TaskTable([("smileface", 10), ("summary", 16)])


def example_conversion(
    root: Path,
    tp: int = 2,
    dtype: str = "fp16",
    tasks: TaskTable = EXAMPLE_TASKS,
    end_id: int = 0,
    vocab_size: int = 512,
) -> Path:
    """A converted directory as far as the repository generator reads it: config.ini, and every
    weight file of its size, all zeros (`vocab_size`: at least the ids of the tokenizer served
    with it)."""
    cfg = layout.ModelConfig(
        model_name="example",
        head_num=8,
        size_per_head=16,
        inter_size=512,
        num_layer=2,
        rotary_embedding=4,
        vocab_size=vocab_size,
        start_id=0,
        end_id=end_id,
        use_gptj_residual=True,
        weight_data_type=dtype,
        tensor_para_size=tp,
        tasks=tasks,
    )
    ft_dir = layout.ft_dir(root, tp)
    ft_dir.mkdir(parents=True)
    for name, shape in layout.weight_files(cfg):
        with open(ft_dir / name, "wb") as f:
            f.truncate(math.prod(shape) * cfg.np_dtype.itemsize)  # sparse: no bytes written
    layout.write_config(ft_dir, cfg)
    return ft_dir


def regenerate(target: Path = REPO_ROOT / "triton_models") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tokenizer(root / "tok")
        example_conversion(root / "conv")
        out = root / "gen"
        if main(["triton-repo", str(root / "conv"), "--out", str(out), "--tokenizer", str(root / "tok")]):
            sys.exit("ftprefix triton-repo failed")
        repository = out / REPOSITORY_DIR
        for tok in repository.rglob("tokenizer"):
            shutil.rmtree(tok)
        for model in (d for d in repository.iterdir() if d.is_dir()):
            shutil.rmtree(target / model.name, ignore_errors=True)
            shutil.copytree(model, target / model.name)


if __name__ == "__main__":
    regenerate()
