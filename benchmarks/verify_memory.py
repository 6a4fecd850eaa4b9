"""Benchmark the memory `ftprefix verify` needs against each of the two models it compares.

Builds a randomly initialised GPT-NeoX saved in float16, as models are published, with one prefix
task, converts it (fp16, tp 1), then, each in its own child process, measures peak RSS:
- the imports verify runs with, alone (the floor of the others);
- the Hugging Face model read as verify reads it (into float32);
- the conversion read as the CPU engine reads it (into float32);
- `ftprefix verify` of the conversion with its prefix.

Prints a Markdown table: each process's peak RSS and what it holds above the imports, then
verify's above the imports as a share of the larger model's and of both together. Holding both
models at once, verify's is the one plus the other; reading one after the other, near the larger.

    .venv/bin/python benchmarks/verify_memory.py [--hidden 1024 --layers 8 --vocab 8192] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from convert import run_measured

from ftprefix import layout
from ftprefix.serving.cpus import float32_bytes

MiB = 2**20
# what verify imports before it reads a model, its lazily imported modeling code included
IMPORTS = (
    "import pathlib, torch, transformers, ftprefix.cli, ftprefix.commands.verify, ftprefix.verify.files, "
    "ftprefix.verify.reference, ftprefix.engine.engine; from transformers import GPTNeoXForCausalLM"
)


def peak_rss(argv: list[str]) -> int:
    """Peak RSS in bytes of one child process (which must succeed)."""
    return run_measured(argv)[1]


def build(workdir: Path, hidden: int, layers: int, vocab: int) -> None:
    """The HF model (hf/), its prefix checkpoint (task.npy) and their conversion (ft/)."""
    import numpy as np

    from ftprefix import cli
    from ftprefix.demo import toy

    hf, ft, prefix = workdir / "hf", workdir / "ft", workdir / "task.npy"
    model = toy.build_model(hidden_size=hidden, num_heads=8, num_layers=layers, vocab_size=vocab)
    # in float16, as models are published: verify reads them into float32, as the engine does
    # the conversion (a float32 safetensors file is mapped instead, its pages the page cache's)
    toy.save_model(model.half(), hf)
    np.save(prefix, toy.random_prefix(4, layers, hidden, seed=1).numpy())
    argv = ["convert", "--model", str(hf), "--prefix", f"task={prefix}", "--tp", "1", "--dtype", "fp16"]
    if cli.main([*argv, "--out", str(ft)]) != 0:
        raise SystemExit("the conversion failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--workdir", type=Path, help="where to build (default: a temporary directory)")
    parser.add_argument("--build-into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_into is not None:
        build(args.build_into, args.hidden, args.layers, args.vocab)
        return

    with tempfile.TemporaryDirectory(prefix="ftprefix-verify-memory-", dir=args.workdir) as scratch:
        # built in a child: a child's peak RSS counts its parent's memory it was forked with, so
        # this process holds nothing large
        sizes = ["--hidden", str(args.hidden), "--layers", str(args.layers), "--vocab", str(args.vocab)]
        subprocess.run([sys.executable, __file__, *sizes, "--build-into", scratch], check=True)
        hf, ft, prefix = Path(scratch) / "hf", Path(scratch) / "ft", Path(scratch) / "task.npy"
        weights = float32_bytes(layout.read_config(layout.find_ft_dir(ft)))
        read_hf = f"ftprefix.verify.reference.load_hf(pathlib.Path({str(hf)!r}), 'fp16')"
        read_ft = f"ftprefix.engine.engine.Engine.load({str(ft)!r})"
        verify = ["-m", "ftprefix", "verify", str(ft), "--model", str(hf), "--prefix", f"task={prefix}"]
        rows = {
            "the imports alone": peak_rss([sys.executable, "-c", IMPORTS]),
            "the Hugging Face model, as verify reads it": peak_rss(
                [sys.executable, "-c", f"{IMPORTS}; {read_hf}"]
            ),
            "the converted model, as the CPU engine reads it": peak_rss(
                [sys.executable, "-c", f"{IMPORTS}; {read_ft}"]
            ),
            "ftprefix verify": peak_rss([sys.executable, *verify]),
        }
    floor = rows["the imports alone"]
    above = {name: rss - floor for name, rss in rows.items()}
    hf_alone, engine_alone = list(above.values())[1:3]
    larger, both = max(hf_alone, engine_alone), hf_alone + engine_alone
    shape = f"hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}"
    print(f"model: {shape}: {weights / MiB:.0f} MiB in float32")
    print()
    print("| process | peak RSS | above the imports |")
    print("|---|---|---|")
    for name, rss in rows.items():
        print(f"| {name} | {rss / MiB:.0f} MiB | {above[name] / MiB:.0f} MiB |")
    print()
    print(f"verify above the imports / the larger model's: {above['ftprefix verify'] / larger:.2f}x")
    print(f"verify above the imports / both models' together: {above['ftprefix verify'] / both:.2f}x")


if __name__ == "__main__":
    main()
