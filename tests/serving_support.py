"""Shared helpers for the serving tests (no tests here): a tiny converted model made the way a user
makes one, with `ftprefix convert` from a toy Hugging Face model, and `ftprefix tasks add`."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from background import runner_pids
from tritonclient.utils import np_to_triton_dtype

from ftprefix import layout, protocol
from ftprefix.cli import main
from ftprefix.demo.toy import build_model, random_prefix
from ftprefix.task_table import TaskTable

HIDDEN, HEADS, LAYERS = 32, 4, 2


def _save_prefix(directory: Path, name: str, prefix: np.ndarray) -> Path:
    path = directory / f"{name}.npy"
    np.save(path, prefix)
    return path


def add_task(ft_dir: Path, name: str, prefix: np.ndarray) -> None:
    """`ftprefix tasks add` with one prefix checkpoint saved next to the converted directory."""
    path = _save_prefix(ft_dir.parent.parent, name, prefix)
    assert main(["tasks", "add", str(ft_dir), "--prefix", f"{name}={path}"]) == 0


def make_converted(root: Path, tasks: dict[str, int], seed: int = 0):
    """Toy HF model + tokenizer in root/hf, `ftprefix convert` (tp 1, fp32) into root/ft/1-gpu.

    Returns (hf_model, ft_dir, prefixes by task name)."""
    hf_dir = root / "hf"
    model = build_model(hf_dir, hidden_size=HIDDEN, num_heads=HEADS, num_layers=LAYERS, seed=seed)
    prefixes = {
        name: random_prefix(length, LAYERS, HIDDEN, seed=seed + 10 + i).numpy()
        for i, (name, length) in enumerate(tasks.items())
    }
    argv = ["convert", "--model", str(hf_dir), "--tp", "1", "--dtype", "fp32", "--out", str(root / "ft")]
    for name, prefix in prefixes.items():
        argv += ["--prefix", f"{name}={_save_prefix(root, name, prefix)}"]
    assert main(argv) == 0
    return model, layout.ft_dir(root / "ft", 1), prefixes


def convert_toy(root: Path, tasks: dict[str, int], hf_name: str = "hf", **model_options) -> dict[str, Path]:
    """A toy model (`build_model(**model_options)`, with a tokenizer) and one random prefix per task
    (seeds 1, 2, ...), converted with `ftprefix convert` (tp 1, fp32): {"hf": ..., "ft": ...}."""
    import torch

    hf = root / hf_name
    config = build_model(hf, **model_options).config
    argv = ["convert", "--model", str(hf), "--tp", "1", "--dtype", "fp32", "--out", str(root / "ft")]
    for seed, (name, length) in enumerate(tasks.items(), start=1):
        prefix = random_prefix(length, config.num_hidden_layers, config.hidden_size, seed=seed)
        torch.save(prefix, root / f"{name}.pt")
        argv += ["--prefix", f"{name}={root / name}.pt"]
    assert main(argv) == 0
    return {"hf": hf, "ft": root / "ft"}


def ft_inputs(rows: list[list[int]], out_len: int, task_ids: list[int] | None = None, pad: int = 0):
    """FT's tensors exactly as a user sends them to the GPU server."""
    return tensors(ft_arrays(rows, out_len, task_ids, pad))


def ft_arrays(
    rows: list[list[int]], out_len: int, task_ids: list[int] | None = None, pad: int = 0
) -> dict[str, np.ndarray]:
    """`ft_inputs` as named numpy arrays."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, dtype=np.uint32)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = r
    arrays = {
        protocol.INPUT_IDS: ids,
        protocol.INPUT_LENGTHS: np.array([[len(r)] for r in rows], dtype=np.uint32),
        protocol.REQUEST_OUTPUT_LEN: np.full((len(rows), 1), out_len, dtype=np.uint32),
    }
    if task_ids is not None:
        arrays[protocol.TASK_IDS] = np.array([[t] for t in task_ids], dtype=np.uint32)
    return arrays


def tensors(arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    """tritonclient inputs from named numpy arrays (object arrays are BYTES)."""
    inputs = []
    for name, arr in arrays.items():
        inp = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


def signals_as_in_a_terminal() -> None:
    """SIGINT and SIGHUP as a terminal delivers them, whatever the suite inherited: a suite started
    in the background of a non-interactive shell ignores SIGINT (under `nohup`, SIGHUP), its
    children would too, and Ctrl-C would not reach `ftprefix serve` (Python installs
    KeyboardInterrupt only over the default action, ftprefix its hang-up handling likewise)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def start_serve_cli(
    ft_dir: Path, *extra: str, env: dict[str, str] | None = None, graceful: bool = False, niceness: int = 0
):
    """`ftprefix serve DIR --grpc-port 0 --http-port 0 --stop-timeout 0 EXTRA` as a user runs it:
    (the process, its gRPC address, everything it printed up to "ready"). A test's server is
    thrown away, so it stops at once instead of unloading its models one by one (`graceful`: as
    a user's does, unloading them). `niceness`: as under `nice -n NICENESS`."""

    def child_setup() -> None:
        signals_as_in_a_terminal()
        os.nice(niceness)

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ftprefix.cli",
            "serve",
            str(ft_dir),
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            *([] if graceful else ["--stop-timeout", "0"]),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=child_setup,
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:  # ends at EOF if the server fails; pytest's timeout is the bound
        lines.append(line)
        if "ready" in line:
            break
    text = "".join(lines)
    match = re.search(r"listening on grpc (\S+) and http (\S+)", text)
    assert match, text + (proc.stderr.read() if proc.poll() is not None else "")
    return proc, match.group(1), text


def served_tasks(client: grpcclient.InferenceServerClient) -> list[str]:
    """The task names of the table the server publishes in the fastertransformer model's config."""
    config = client.get_model_config(protocol.FT_MODEL, as_json=True)["config"]
    return TaskTable.from_json(config["parameters"][protocol.TASK_TABLE_PARAMETER]["string_value"]).names


def stop_serve_cli(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ft_model_stats(url: str) -> list[dict]:
    with grpcclient.InferenceServerClient(url) as raw:
        return raw.get_inference_statistics(protocol.FT_MODEL, as_json=True).get("model_stats", [])


def rows_counted(url: str) -> int:
    """Prompt rows the `fastertransformer` model finished, as Triton itself counts them (its
    inference_count: a request of three rows counts three)."""
    return sum(int(s.get("inference_count", 0)) for s in _ft_model_stats(url))


def requests_counted(url: str) -> int:
    """Requests the `fastertransformer` model answered, as Triton itself counts them (its
    successes: a request refused with an error response counts too)."""
    return sum(int(s["inference_stats"].get("success", {}).get("count", 0)) for s in _ft_model_stats(url))


def statistics_counting(url: str, inferences: int) -> dict:
    """Triton's statistics of the `fastertransformer` model once they count `inferences` requests
    (or after 10 s): Triton counts a request after its answer is on its way, so statistics read as
    soon as the last answer came may not count it yet."""
    deadline = time.monotonic() + 10
    with grpcclient.InferenceServerClient(url) as c:
        while True:
            stats = c.get_inference_statistics(protocol.FT_MODEL, as_json=True)["model_stats"][0]
            if int(stats.get("inference_count", 0)) >= inferences or time.monotonic() > deadline:
                return stats
            time.sleep(0.05)  # bounded poll; the caller asserts on what it returns


def children_running(parent: int, model: bytes) -> list[int]:
    """The processes whose parent is `parent` and whose command line names `model`, from /proc."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rpartition(b")")[2].split()[:2]
        if int(ppid) == parent and state != b"Z" and model in cmdline:
            found.append(int(name))
    return found


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, as /proc lists them, but the background runner's (background.py),
    which runs beside the tests and belongs to none. /proc lists a process's children by the
    thread that started each (embedded servers start Triton from a thread of their own)."""
    found, todo, skipped = set(), [pid], runner_pids()
    while todo:
        p = todo.pop()
        kids = []
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids += (task / "children").read_text().split()
        for k in map(int, kids):
            if k in skipped:
                continue
            found.add(k)
            todo.append(k)
    return found


def alive(pid: int) -> bool:
    """`pid` runs (a zombie, ended and not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: set[int], seconds: float = 30) -> set[int]:
    """Those of `pids` still running after waiting up to `seconds` for all to end."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = {p for p in pids if alive(p)}
        if not left:
            return left
        time.sleep(0.1)  # bounded poll; the return value is the check
    return {p for p in pids if alive(p)}


def has_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open (a command holding, or waiting for, a lock file)."""
    try:
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # it ended, or closed a file while we looked
        return False


def wait_until_open(proc: subprocess.Popen, path: Path, seconds: float = 60) -> None:
    """Return once `proc` has `path` open; fail if it ends first, or after `seconds`."""
    deadline = time.monotonic() + seconds
    while not has_open(proc.pid, path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} was not opened within {seconds} s"
        time.sleep(0.01)  # polling another process's open files


def another_models_tokenizer(hf: Path, out: Path, vocab: int) -> Path:
    """`hf`'s tokenizer (tokenizer.json) grown to give ids up to vocab + 3, four more than a model
    of `vocab` ids has embeddings for: what another model's tokenizer looks like to it. In `out`."""
    from tokenizers import Tokenizer as HFTokenizer

    from ftprefix.text import copy_tokenizer_files

    copy_tokenizer_files(hf, out)
    tokenizer = HFTokenizer.from_file(str(out / "tokenizer.json"))
    ids = tokenizer.get_vocab_size(with_added_tokens=True)
    assert ids <= vocab
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(vocab + 4 - ids)])
    tokenizer.save(str(out / "tokenizer.json"))
    return out
