"""Benchmark `ftprefix convert` against a plain `cp` of the same source files (the disk's limit).

Builds a randomly initialised GPT-NeoX with pythia-1b's shape as an fp16 `model.safetensors`
(streamed tensor by tensor, never the whole model in memory), then, each in its own child process:
- `cp` of the source files,
- `ftprefix convert --tp 2 --dtype fp16` with one prefix task,
and reports seconds, peak RSS and bytes read+written for both, with ratios, as a Markdown table.

    .venv/bin/python benchmarks/convert.py [--layers 16 --hidden 2048 --vocab 50304] [--workdir DIR] [--keep]

Page cache is not dropped: both runs read a source that the build just wrote (warm cache).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# pythia-1b (EleutherAI/pythia-1b config.json)
PYTHIA_1B = dict(
    hidden_size=2048,
    num_attention_heads=8,
    num_hidden_layers=16,
    intermediate_size=8192,
    vocab_size=50304,
    rotary_pct=0.25,
    use_parallel_residual=True,
)


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {"gpt_neox.embed_in.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"gpt_neox.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "input_layernorm.bias": (h,),
                p + "post_attention_layernorm.weight": (h,),
                p + "post_attention_layernorm.bias": (h,),
                p + "attention.query_key_value.weight": (3 * h, h),
                p + "attention.query_key_value.bias": (3 * h,),
                p + "attention.dense.weight": (h, h),
                p + "attention.dense.bias": (h,),
                p + "mlp.dense_h_to_4h.weight": (inter, h),
                p + "mlp.dense_h_to_4h.bias": (inter,),
                p + "mlp.dense_4h_to_h.weight": (h, inter),
                p + "mlp.dense_4h_to_h.bias": (h,),
            }
        )
    shapes["gpt_neox.final_layer_norm.weight"] = (h,)
    shapes["gpt_neox.final_layer_norm.bias"] = (h,)
    shapes["embed_out.weight"] = (v, h)
    return shapes


def build_random_model(hf_dir: Path, cfg: dict, seed: int = 0) -> None:
    """Write config.json and an fp16 model.safetensors, one tensor at a time."""
    hf_dir.mkdir(parents=True)
    shapes = tensor_shapes(cfg)
    header: dict[str, dict] = {}
    offset = 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data aligned to 8 bytes, as the safetensors library writes it
    rng = np.random.default_rng(seed)
    with open(hf_dir / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for shape in shapes.values():
            (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16).tofile(f)
    config = dict(
        cfg,
        model_type="gpt_neox",
        architectures=["GPTNeoXForCausalLM"],
        hidden_act="gelu",
        rotary_emb_base=10000,
        layer_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
        torch_dtype="float16",
    )
    (hf_dir / "config.json").write_text(json.dumps(config, indent=2))


def run_measured(argv: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed with exit code {proc.returncode}")
    return seconds, usage.ru_maxrss * 1024  # Linux reports KiB


def best_of(repeat: int, argv: list[str], output: Path, keep_last: bool = False) -> tuple[float, int]:
    """Fastest wall time and largest peak RSS over `repeat` runs; `output` is removed between runs."""
    runs = []
    for i in range(repeat):
        runs.append(run_measured(argv))
        if not (keep_last and i == repeat - 1):
            shutil.rmtree(output)
    return min(s for s, _ in runs), max(r for _, r in runs)


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=PYTHIA_1B["num_hidden_layers"])
    parser.add_argument("--hidden", type=int, default=PYTHIA_1B["hidden_size"], help="(intermediate = 4x)")
    parser.add_argument("--vocab", type=int, default=PYTHIA_1B["vocab_size"])
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the fastest counts")
    parser.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    cfg = dict(
        PYTHIA_1B,
        num_hidden_layers=args.layers,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        vocab_size=args.vocab,
    )
    shape_args = ["--layers", str(args.layers), "--hidden", str(args.hidden), "--vocab", str(args.vocab)]
    if args.build_only:
        build_random_model(args.build_only, cfg)
        return 0
    work = Path(tempfile.mkdtemp(prefix="ftprefix-bench-", dir=args.workdir))
    try:
        src = work / "pythia-1b-random"
        t0 = time.perf_counter()
        # In a child process: the random tensors must not inflate this process, whose RSS every
        # measured child inherits at fork time.
        subprocess.run([sys.executable, __file__, *shape_args, "--build-only", str(src)], check=True)
        params = sum(int(np.prod(s)) for s in tensor_shapes(cfg).values())
        print(
            f"built {params / 1e9:.2f}B-parameter fp16 model in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        prefix = work / "task_prefix.npy"
        width = cfg["num_hidden_layers"] * 2 * cfg["hidden_size"]
        np.save(prefix, np.random.default_rng(1).standard_normal((20, width), dtype=np.float32))

        src_bytes = tree_bytes(src)
        cp_s, cp_rss = best_of(args.repeat, ["cp", "-r", str(src), str(work / "copy")], work / "copy")

        out = work / "ft"
        cmd = [sys.executable, "-m", "ftprefix.cli", "convert", "--model", str(src), "--prefix", str(prefix)]
        cmd += ["--tp", "2", "--dtype", "fp16", "--out", str(out)]
        conv_s, conv_rss = best_of(args.repeat, cmd, out, keep_last=True)
        conv_io = src_bytes + prefix.stat().st_size + tree_bytes(out)
        cp_io = 2 * src_bytes

        gib = 1024**3
        rows = [
            ("seconds", f"{conv_s:.1f}", f"{cp_s:.1f}", f"{conv_s / cp_s:.2f}x"),
            ("peak RSS", f"{conv_rss / gib:.2f} GiB", f"{cp_rss / gib:.3f} GiB", f"{conv_rss / cp_rss:.0f}x"),
            (
                "bytes read+written",
                f"{conv_io / gib:.2f} GiB",
                f"{cp_io / gib:.2f} GiB",
                f"{conv_io / cp_io:.2f}x",
            ),
            (
                "throughput (read+written)",
                f"{conv_io / gib / conv_s:.2f} GiB/s",
                f"{cp_io / gib / cp_s:.2f} GiB/s",
                f"{(conv_io / conv_s) / (cp_io / cp_s):.2f}x",
            ),
        ]
        print(
            f"GPT-NeoX {params / 1e9:.2f}B (hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, "
            f"vocab {cfg['vocab_size']}), fp16 -> FT fp16 tp=2, one 20-token prefix; "
            f"{os.cpu_count()} CPU cores\n"
        )
        print("| | ftprefix convert | cp (disk limit) | ratio |")
        print("|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
