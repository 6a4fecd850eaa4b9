"""`ftprefix convert`: Hugging Face GPT-NeoX + prefix checkpoints -> FasterTransformer layout."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ftprefix import layout


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a GPT-NeoX model and prefix checkpoints to FasterTransformer's layout",
        description="Write <out>/<tp>-gpu/ with config.ini, the base weights split for --tp ranks, "
        "and one prefix per task (rinna .checkpoint, PEFT prefix/prompt-tuning adapter "
        "directories, or saved tensors; soft prompts are turned into exact prefixes).",
    )
    p.add_argument(
        "--model",
        required=True,
        type=Path,
        metavar="HF_DIR",
        help="local Hugging Face GPT-NeoX directory (config.json + safetensors or pytorch_model*.bin)",
    )
    p.add_argument(
        "--prefix",
        action="append",
        default=[],
        metavar="CKPTS",
        help="comma-separated checkpoints, each PATH or NAME=PATH; repeatable. Task names default "
        "to the file name (rinna: up to '_prefix_encoder') or the adapter directory's name",
    )
    p.add_argument("--tp", type=int, default=1, choices=layout.SUPPORTED_TP, help="tensor-parallel size")
    p.add_argument("--dtype", default="fp16", choices=tuple(layout.WEIGHT_DTYPES), help="weight data type")
    p.add_argument("--out", required=True, type=Path, help="output directory (weights go to OUT/<tp>-gpu/)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow torch pickles that run code when loaded (only for files you trust)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ftprefix.converter import convert
    from ftprefix.converter.checkpoints import parse_prefix_args
    from ftprefix.converter.summary import format_table, human_bytes

    report = convert(
        args.model,
        parse_prefix_args(args.prefix),
        args.out,
        tp=args.tp,
        dtype=args.dtype,
        force=args.force,
        trust_pickle=args.trust_pickle,
    )
    rows: list[list[object]] = [
        [t.task_id, t.name, t.kind.replace("_", " "), t.prompt_length, human_bytes(t.bytes_written)]
        for t in report.tasks
    ]
    rows.append(
        ["", "(base model)", f"{report.base_files} files", "", human_bytes(report.base_bytes_written)]
    )
    print(format_table(["id", "task", "from", "prefix length", "bytes written"], rows))
    print(
        f"wrote {human_bytes(report.bytes_written)} to {report.model_dir} "
        f"(tp {report.config.tensor_para_size}, {report.config.weight_data_type}) "
        f"in {report.seconds:.1f} s"
    )
    return 0
