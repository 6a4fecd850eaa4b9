"""`ftprefix convert`: Hugging Face GPT-NeoX + prefix checkpoints -> FasterTransformer layout."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ftprefix import layout, model_dirs
from ftprefix.commands.options import add_prefix_option, add_trust_pickle_option, add_wait_option


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
        type=model_dirs.hf_dir,
        metavar="HF_DIR",
        help=(
            "Hugging Face GPT-NeoX directory (config.json + safetensors or pytorch_model*.bin), or "
            "ORG/NAME of one in the Hugging Face cache (`hf download ORG/NAME`)"
        ),
    )
    add_prefix_option(p)
    p.add_argument("--tp", type=int, default=1, choices=layout.SUPPORTED_TP, help="tensor-parallel size")
    p.add_argument("--dtype", default="fp16", choices=tuple(layout.WEIGHT_DTYPES), help="weight data type")
    p.add_argument("--out", required=True, type=Path, help="output directory (weights go to OUT/<tp>-gpu/)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an earlier conversion for the same --tp in OUT (nothing else in OUT is touched)",
    )
    add_wait_option(p)
    add_trust_pickle_option(p)
    p.set_defaults(func=run, extras=("convert",))


def run(args: argparse.Namespace) -> int:
    from ftprefix.commands.options import check_wait, prefix_sources
    from ftprefix.commands.tables import written_tasks_table
    from ftprefix.console import human_bytes
    from ftprefix.converter import convert

    report = convert(
        args.model,
        prefix_sources(args.prefix, args.prefix_dir),
        args.out,
        tp=args.tp,
        dtype=args.dtype,
        force=args.force,
        trust_pickle=args.trust_pickle,
        wait=check_wait(args.wait),
    )
    print(written_tasks_table(report.tasks, base=report))
    print(
        f"wrote {human_bytes(report.bytes_written)} to {report.ft_dir} "
        f"(tp {report.config.tensor_para_size}, {report.config.weight_data_type}) "
        f"in {report.seconds:.1f} s"
    )
    return 0
