"""`ftprefix verify`: compare converted files (on CPU) or a live server with Hugging Face."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ftprefix import layout, model_dirs
from ftprefix.commands.options import add_prefix_option, add_trust_pickle_option
from ftprefix.commands.tables import format_table


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verify",
        help="compare a converted model (files, on CPU) or a running server (--url) with Hugging Face",
        description="Files: run the converted FasterTransformer files on CPU with FasterTransformer's "
        "semantics and compare logits and greedy tokens with Hugging Face GPTNeoXForCausalLM given each "
        "task's original prefix as past_key_values (or its soft prompt as input embeddings); an fp16 "
        "conversion is also run with fp16 activations to catch overflows. --url: send one mixed batch of "
        "greedy requests to a running server (the FT backend on GPUs or ftprefix serve), streamed too "
        "when it streams, and compare every row with Hugging Face. Exits 1 on a mismatch.",
    )
    p.add_argument(
        "directory", nargs="?", type=Path, metavar="DIR", help="converted directory (OUT or OUT/<tp>-gpu)"
    )
    p.add_argument("--url", metavar="HOST:PORT", help="check a running server (gRPC) instead of files")
    p.add_argument(
        "--model",
        required=True,
        type=model_dirs.hf_dir,
        metavar="HF_DIR",
        help="the Hugging Face model that was converted (a directory, or ORG/NAME in the cache)",
    )
    add_prefix_option(
        p,
        help="the original checkpoints, as given to `ftprefix convert` (NAME=PATH or PATH, "
        "comma-separated, repeatable); tasks without one are listed as not checked",
    )
    p.add_argument(
        "--atol",
        type=float,
        default=None,
        help="files: largest allowed max abs logit difference (default 2e-3 for fp32, 5e-2 for fp16)",
    )
    p.add_argument(
        "--tie-gap",
        type=float,
        default=None,
        help="--url: largest Hugging Face logit gap at which differing greedy tokens count as a near tie "
        "(default 0.01 for fp32, 0.25 for fp16)",
    )
    p.add_argument(
        "--gelu",
        choices=("auto", "tanh", "erf"),
        default="auto",
        help="files: GELU formula for the engine; auto follows the HF config's hidden_act "
        "(FasterTransformer itself always uses tanh)",
    )
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS", help="--url: per request")
    add_trust_pickle_option(p)
    p.set_defaults(func=run, extras=("verify",))


def run(args: argparse.Namespace) -> int:
    from ftprefix.commands.options import prefix_sources
    from ftprefix.errors import UserError

    for flag in ("atol", "tie_gap", "timeout"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if (args.directory is None) == (args.url is None):
        raise UserError("give DIR (converted files) or --url HOST:PORT (a running server), one of them")
    sources = prefix_sources(args.prefix, args.prefix_dir)
    if args.url is not None:
        from ftprefix.converter.hf_config import read_hf_config
        from ftprefix.verify.live import verify_server

        _warn_of_memory(read_hf_config(args.model).to_ft(tp=1, dtype="fp32", model_name=""))
        live = verify_server(
            args.url,
            args.model,
            sources,
            tie_gap=args.tie_gap,
            timeout=args.timeout,
            trust_pickle=args.trust_pickle,
            say=_progress,
        )
        print(live_table(live.rows))
        return _summary([r.task for r in live.rows if not r.ok], sum(r.checked for r in live.rows), live.rows)

    from ftprefix.verify import verify_files

    _warn_of_memory(layout.read_config(layout.find_ft_dir(args.directory)))
    report = verify_files(
        args.directory,
        args.model,
        sources,
        atol=args.atol,
        gelu=args.gelu,
        trust_pickle=args.trust_pickle,
        say=_progress,
    )
    print(files_table(report.rows))
    failed = [r.task for r in report.rows if not r.ok]
    if report.fp16 is not None:
        print()
        print(fp16_table(report.fp16))
        if not report.fp16.ok:
            print(
                "OVERFLOW: activations exceed fp16's range, so FasterTransformer would answer garbage in "
                "fp16: convert with --dtype fp32 (or use prefixes with a smaller norm)"
            )
            failed.append("fp16 activations")
    return _summary(failed, sum(r.max_abs_diff is not None for r in report.rows), report.rows)


def _warn_of_memory(cfg: layout.ModelConfig) -> None:
    from ftprefix.serving.cpus import available_memory

    if (note := memory_note(cfg, available_memory())) is not None:
        _progress(f"warning: {note}")


def memory_note(cfg: layout.ModelConfig, available: int | None) -> str | None:
    """A warning where the model in float32 (what verify reads each model into, one at a time)
    needs more memory than is available: verify would be killed after minutes of reading."""
    from ftprefix.console import human_bytes
    from ftprefix.serving.cpus import float32_bytes

    needed = float32_bytes(cfg)
    if available is None or needed <= available:
        return None
    return (
        f"verify reads the model into float32, {human_bytes(needed)}, and {human_bytes(available)} of "
        "memory is available here: it may be killed for lack of memory (run it where more is free)"
    )


def _progress(line: str) -> None:
    """On stderr, so that stdout holds the table alone."""
    print(f"ftprefix verify: {line}", file=sys.stderr, flush=True)


def _summary(failed: list[str], checked: int, rows: list[Any]) -> int:
    if failed:
        print(f"MISMATCH: {', '.join(failed)}")
        return 1
    ties = sum(len(getattr(r, "near_ties", [])) for r in rows)
    note = f" ({ties} near tie(s), see above)" if ties else ""
    print(f"ok: {checked} of {len(rows)} checked, all match{note}")
    return 0


def files_table(rows: list[Any]) -> str:
    table = []
    for r in rows:
        if r.max_abs_diff is None:
            table.append([r.task, r.prompt_length, "-", "-", r.note])
            continue
        result = "ok" if r.ok else f"MISMATCH ({r.note})"
        diff = f"{r.max_abs_diff:.3g}"
        table.append([r.task, r.prompt_length, diff, "yes" if r.greedy_equal else "no", result])
    return format_table(["task", "prefix length", "max abs diff", "greedy tokens equal", "result"], table)


def live_table(rows: list[Any]) -> str:
    table = []
    for r in rows:
        first = r.first or (r.near_ties[0] if r.near_ties else None)
        where = "-"
        if first is not None:
            where = (
                f"row {first.row} token {first.position}: expected {first.expected}, got {first.got} "
                f"(gap {first.gap:.3g})"
            )
        if not r.checked:
            result = r.note
        elif r.first is not None:
            result = "MISMATCH"
        elif r.note:
            result = f"MISMATCH ({r.note})"
        elif r.near_ties:
            result = f"ok, {len(r.near_ties)} near tie(s)"
        else:
            result = "ok"
        table.append([r.task, r.prompt_length, r.compared if r.checked else "-", where, result])
    return format_table(["task", "prefix length", "tokens compared", "first difference", "result"], table)


def fp16_table(check: Any) -> str:
    last = max(check.largest) if check.largest else 0

    def name(layer: int) -> str:
        return "embeddings" if layer < 0 else ("final" if layer == last else str(layer))

    rows = [
        [name(layer), f"{value:.4g}", "inf/nan" if layer in check.non_finite else ""]
        for layer, value in check.largest.items()
    ]
    table = format_table(["fp16 activations: layer", "largest |value| (fp16 max 65504)", ""], rows)
    return f"{table}\nlogits with fp16 activations vs fp32: max abs diff {check.logit_error:.3g}"
