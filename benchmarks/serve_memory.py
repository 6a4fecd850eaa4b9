"""Benchmark the CPU server's memory with the base weights mapped from one copy by every engine
instance, against each instance reading its own (as before), in one run.

Builds a randomly initialised GPT-NeoX with one prefix task, converts it (fp16, tp 2: the
instances need a float32 copy), then serves it each way with `--instances N` and measures the
server's processes together (Triton and every python backend process, the sum of their PSS, which
splits a page shared by k processes k ways): after requests have run on every instance, and at
its peak while a task is added (`ftprefix tasks add`), whose reload starts new instances while the
old ones still answer. Prints a Markdown table.

    .venv/bin/python benchmarks/serve_memory.py [--hidden 1024 --layers 12 --vocab 16384 --instances 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from ftprefix import layout, protocol
from ftprefix.cli import main as ftprefix
from ftprefix.demo import toy
from ftprefix.serving.cpus import float32_bytes
from ftprefix.serving.server import EmbeddedServer

MiB = 2**20


def build(workdir: Path, hidden: int, layers: int, vocab: int) -> Path:
    """The converted model's directory, and a second task's prefix beside it (task2.npy)."""
    toy.build_model(
        workdir / "hf",
        hidden_size=hidden,
        num_heads=8,
        num_layers=layers,
        vocab_size=vocab,
        with_tokenizer=False,
    )
    for name, seed in (("task", 1), ("task2", 2)):
        np.save(workdir / f"{name}.npy", toy.random_prefix(8, layers, hidden, seed=seed).numpy())
    argv = ["convert", "--model", str(workdir / "hf"), "--prefix", f"task={workdir / 'task.npy'}"]
    with contextlib.redirect_stdout(io.StringIO()):
        converted = ftprefix([*argv, "--tp", "2", "--dtype", "fp16", "--out", str(workdir / "ft")])
    if converted != 0:
        raise SystemExit("the conversion failed")
    return workdir / "ft"


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            children.setdefault(int(stat.rpartition(b")")[2].split()[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_pss(root: int) -> int:
    """Bytes: the PSS of `root` and its descendants."""
    total = 0
    for pid in _tree(root):
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")) * 1024
    return total


def requests(url: str, count: int) -> None:
    """`count` requests at once: with Triton's dynamic batcher holding them a moment, every instance
    gets some, and touches every weight."""
    arrays = {
        "input_ids": np.array([[5, 9, 14, 3]], np.uint32),
        "input_lengths": np.array([[4]], np.uint32),
        "request_output_len": np.array([[2]], np.uint32),
    }
    with grpcclient.InferenceServerClient(url) as client:
        tensors = []
        for name, value in arrays.items():
            tensor = grpcclient.InferInput(name, list(value.shape), "UINT32")
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda _: client.infer(protocol.FT_MODEL, tensors), range(count)))


def served_table(client: grpcclient.InferenceServerClient) -> str:
    config = client.get_model_config(protocol.FT_MODEL, as_json=True)["config"]
    return str(config["parameters"][protocol.TASK_TABLE_PARAMETER]["string_value"])


def measure(ft: Path, prefix: Path, instances: int, share: bool) -> dict[str, float]:
    started = time.perf_counter()
    with EmbeddedServer(
        ft, instances=instances, watch_interval=0.05, stop_timeout=0, share_weights=share
    ) as srv:
        ready = time.perf_counter() - started
        assert srv.pid is not None
        for _ in range(3):
            requests(srv.grpc_url, 4 * instances)
        steady = tree_pss(srv.pid)
        peak, began = steady, time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # its summary table
            if ftprefix(["tasks", "add", str(ft), "--prefix", f"task2={prefix}"]) != 0:
                raise SystemExit("tasks add failed")
        with grpcclient.InferenceServerClient(srv.grpc_url) as client:
            while "task2" not in served_table(client):  # the server's watcher loads the model again
                peak = max(peak, tree_pss(srv.pid))
        reload = time.perf_counter() - began
        with contextlib.redirect_stdout(io.StringIO()):
            ftprefix(["tasks", "remove", str(ft), "task2"])  # as it was, for the other way
        return {"ready": ready, "steady": steady, "peak": peak, "reload": reload}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="where to build (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftprefix-serve-memory-", dir=args.workdir) as scratch:
        ft = build(Path(scratch), args.hidden, args.layers, args.vocab)
        weights = float32_bytes(layout.read_config(layout.find_ft_dir(ft)))
        ways = {
            "mapped from one copy": measure(ft, Path(scratch) / "task2.npy", args.instances, share=True),
            "read by each instance": measure(ft, Path(scratch) / "task2.npy", args.instances, share=False),
        }
    shape = f"hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}"
    print(f"model: {shape}: {weights / MiB:.0f} MiB in float32; {args.instances} engine instances")
    print()
    print("| weights | ready in | server's PSS, serving | peak while a task is added | reload |")
    print("|---|---|---|---|---|")
    for way, m in ways.items():
        print(
            f"| {way} | {m['ready']:.1f} s | {m['steady'] / MiB:.0f} MiB | {m['peak'] / MiB:.0f} MiB "
            f"| {m['reload']:.1f} s |"
        )
    shared, own = ways.values()
    print()
    print(f"serving: {own['steady'] / shared['steady']:.2f}x the memory when each instance reads its own")
    print(f"while a task is added: {own['peak'] / shared['peak']:.2f}x")


if __name__ == "__main__":
    main()
