"""The CPU server's engine instances share one copy of the base weights (engine/shared_weights.py):
read from each process's /proc maps, checked by their answers against Hugging Face, through a
reload and a conversion replaced under the running server."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hf_reference import HFReference
from serving_support import HEADS, HIDDEN, LAYERS, add_task, children_running, ft_inputs, served_tasks

from ftprefix import layout, protocol
from ftprefix.cli import main
from ftprefix.demo.toy import build_model, random_prefix
from ftprefix.serving import cpus
from ftprefix.serving import server as server_module
from ftprefix.serving.server import EmbeddedServer

PROMPT = [5, 9, 14, 3]
OUT_LEN = 6
END_ID = 0  # the toy model's


def _convert(
    root: Path,
    seed: int,
    tp: int,
    tasks: dict[str, int],
    force: bool = False,
    hf_name: str = "",
    dtype: str = "fp32",
) -> tuple[Path, HFReference]:
    hf = root / (hf_name or f"hf{seed}")
    build_model(hf, hidden_size=HIDDEN, num_heads=HEADS, num_layers=LAYERS, seed=seed)
    prefixes = {name: random_prefix(p, LAYERS, HIDDEN, seed=seed + p).numpy() for name, p in tasks.items()}
    argv = ["convert", "--model", str(hf), "--tp", str(tp), "--dtype", dtype, "--out", str(root / "ft")]
    for name, prefix in prefixes.items():
        np.save(root / f"{name}{seed}.npy", prefix)
        argv += ["--prefix", f"{name}={root / f'{name}{seed}.npy'}"]
    assert main(argv + ["--force"] * force) == 0
    return layout.ft_dir(root / "ft", tp), HFReference(hf, prefixes)


def _engines(srv: EmbeddedServer) -> list[int]:
    """The fastertransformer instances' processes (children of Triton running its model.py: a
    child Triton has forked but not yet started the stub in still has Triton's command line)."""
    assert srv.pid is not None
    return sorted(children_running(srv.pid, b"/fastertransformer/1/model.py"))


def _mapped(pid: int, under: Path) -> dict[str, tuple[int, int]]:
    """File name -> (inode, kB copied on write) of every mapping of a file under `under`: a page
    of a private file mapping that a process writes becomes anonymous, its own."""
    found: dict[str, tuple[int, int]] = {}
    current = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header
            path = fields[5] if len(fields) > 5 else ""
            current = Path(path).name if path and Path(path).is_relative_to(under) else None
            if current is not None:
                found[current] = (int(fields[4]), found.get(current, (0, 0))[1])
        elif current is not None and fields[0] == "Anonymous:":
            inode, copied = found[current]
            found[current] = (inode, copied + int(fields[1]))
    return found


def _used_files(cfg: layout.ModelConfig) -> set[str]:
    """The base tensors the engine keeps, as files of the tp-1 layout: not the attention and MLP
    output biases that a parallel-residual model reads as one sum (which is scaled, a copy)."""
    names = set()
    for spec in layout.base_tensors(cfg):
        (name,) = spec.file_names(1)
        names.add(name)
    return {n for n in names if not n.endswith(("attention.dense.bias.bin", "4h_to_h.bias.bin", ".sum.bin"))}


def _answer(url: str, task_id: int) -> list[int]:
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer(protocol.FT_MODEL, ft_inputs([PROMPT], OUT_LEN, [task_id]))
    ids = result.as_numpy(protocol.OUTPUT_IDS)[0, 0].tolist()
    return ids[len(PROMPT) : int(result.as_numpy(protocol.SEQUENCE_LENGTH)[0, 0])]


def _wait_for(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)  # bounded poll for the server's processes; the assertion above is the check


@pytest.mark.parametrize("tp", [2, 1], ids=["tp2-copied", "tp1-fp32-as-converted"])
def test_the_instances_map_one_copy_and_a_reload_maps_the_same_one(tmp_path: Path, tp: int) -> None:
    ft_dir, hf = _convert(tmp_path, seed=0, tp=tp, tasks={"a": 3})
    cfg = layout.read_config(ft_dir)
    with (
        EmbeddedServer(ft_dir, instances=2, watch_interval=0.1, stop_timeout=0) as srv,
        grpcclient.InferenceServerClient(srv.grpc_url) as client,
    ):
        # tp 2 is copied once into the scratch directory; a tp-1 fp32 conversion is mapped as it is
        place = srv.workdir / server_module.SHARED_WEIGHTS_DIR if tp == 2 else ft_dir
        assert (srv.workdir / server_module.SHARED_WEIGHTS_DIR).exists() == (tp == 2)
        said = (
            r"\d+\.\d KiB in float32, mapped by every instance from one copy \(written in \d+\.\d s\)"
            if tp == 2
            else "mapped by every instance from the conversion's files"
        )
        assert re.fullmatch(said, srv.weights_note), srv.weights_note
        assert _answer(srv.grpc_url, 0) == hf.greedy(PROMPT, "a", OUT_LEN, END_ID)[0]
        engines = _engines(srv)
        assert len(engines) == 2
        maps = [_mapped(pid, place) for pid in engines]
        assert set(maps[0]) == set(maps[1]) >= _used_files(cfg)  # every weight the engine computes with
        assert maps[0] == maps[1]  # the same files (inodes), written by neither: one copy in memory
        assert all(copied == 0 for _, copied in maps[0].values())
        written = {name: os.stat(place / name).st_mtime_ns for name in _used_files(cfg)}

        add_task(ft_dir, "b", random_prefix(4, LAYERS, HIDDEN, seed=7).numpy())
        _wait_for(lambda: served_tasks(client) == ["a", "b"], "the reload")
        _wait_for(lambda: not set(_engines(srv)) & set(engines), "the old instances to end")
        again = [_mapped(pid, place) for pid in _engines(srv)]
        assert again[0] == again[1] == maps[0]  # the reload's instances map the very same copy
        assert {name: os.stat(place / name).st_mtime_ns for name in written} == written  # not again
        hf_b = HFReference(tmp_path / "hf0", {"b": random_prefix(4, LAYERS, HIDDEN, seed=7).numpy()})
        assert _answer(srv.grpc_url, 1) == hf_b.greedy(PROMPT, "b", OUT_LEN, END_ID)[0]


def test_a_conversion_replaced_under_the_server_is_answered_with_its_new_weights(tmp_path: Path) -> None:
    """A base model and prefixes trained again, converted again into the same place with the same
    names and shapes: config.ini comes out byte for byte as it was, and the server still notices."""
    ft_dir, hf = _convert(tmp_path, seed=0, tp=2, tasks={"a": 3}, hf_name="hf")
    old = hf.greedy(PROMPT, "a", OUT_LEN, END_ID)[0]
    config = (ft_dir / layout.CONFIG_FILE).read_bytes()
    with EmbeddedServer(ft_dir, instances=1, watch_interval=None, stop_timeout=0) as srv:
        place = srv.workdir / server_module.SHARED_WEIGHTS_DIR
        assert _answer(srv.grpc_url, 0) == old
        (before,) = _engines(srv)
        inodes = {inode for inode, _ in _mapped(before, place).values()}

        _, hf = _convert(tmp_path, seed=1, tp=2, tasks={"a": 3}, hf_name="hf", force=True)
        assert (ft_dir / layout.CONFIG_FILE).read_bytes() == config
        want = hf.greedy(PROMPT, "a", OUT_LEN, END_ID)[0]
        assert want != old
        assert srv.reload() is not None  # what the watcher calls; returns once loaded again
        assert _answer(srv.grpc_url, 0) == want
        _wait_for(lambda: before not in _engines(srv), "the old instance to end")
        (after,) = _engines(srv)
        renewed = _mapped(after, place)  # the copy written again: the same files, new ones
        assert len(renewed) == len(inodes) and not {inode for inode, _ in renewed.values()} & inodes


def test_a_conversion_mapped_as_it_is_replaced_by_one_that_needs_a_copy_is_copied_not_touched(
    tmp_path: Path,
) -> None:
    """tp 1 fp32 is mapped where it lies; `convert --force --dtype fp16` into the same place needs
    a copy in the scratch directory, and the conversion stays as convert wrote it."""
    ft_dir, _ = _convert(tmp_path, seed=0, tp=1, tasks={"a": 3})
    with EmbeddedServer(ft_dir, instances=1, watch_interval=None, stop_timeout=0) as srv:
        place = srv.workdir / server_module.SHARED_WEIGHTS_DIR
        (before,) = _engines(srv)
        assert _mapped(before, ft_dir) and not place.exists()

        _, hf = _convert(tmp_path, seed=1, tp=1, tasks={"a": 3}, force=True, dtype="fp16")
        written = {p.name: p.read_bytes() for p in ft_dir.iterdir()}
        assert srv.reload() is not None
        assert _answer(srv.grpc_url, 0) == hf.greedy(PROMPT, "a", OUT_LEN, END_ID)[0]
        _wait_for(lambda: before not in _engines(srv), "the old instance to end")
        (after,) = _engines(srv)
        assert _mapped(after, place).keys() >= _used_files(layout.read_config(ft_dir))
        assert not _mapped(after, ft_dir)
        assert {p.name: p.read_bytes() for p in ft_dir.iterdir()} == written


def test_without_room_for_the_copy_each_instance_reads_its_own_and_says_so(
    tmp_path: Path, monkeypatch
) -> None:
    ft_dir, hf = _convert(tmp_path, seed=0, tp=2, tasks={"a": 3})
    needed = cpus.float32_bytes(layout.read_config(ft_dir))
    real = server_module.shutil.disk_usage

    def little_room(path):  # a nearly full disk for the scratch directory
        usage = real(path)
        return usage._replace(free=needed // 2)

    monkeypatch.setattr(server_module.shutil, "disk_usage", little_room)
    with EmbeddedServer(ft_dir, instances=2, stop_timeout=0, watch_interval=None) as srv:
        assert srv.weights_note.startswith("each instance reads its own: one copy to share needs")
        assert not (srv.workdir / server_module.SHARED_WEIGHTS_DIR).exists()
        for pid in _engines(srv):  # no weight file mapped, neither a copy's nor the conversion's
            assert not [name for name in _mapped(pid, Path("/")) if name.endswith(".bin")]
        assert _answer(srv.grpc_url, 0) == hf.greedy(PROMPT, "a", OUT_LEN, END_ID)[0]


def test_a_copy_no_longer_needed_after_a_conversion_replaced_under_the_server_is_removed(
    tmp_path: Path,
) -> None:
    """fp16 is copied into the scratch directory; `convert --force --dtype fp32` into the same place
    is mapped as it is, and the copy, the model's float32 size on disk, goes."""
    ft_dir, _ = _convert(tmp_path, seed=0, tp=1, tasks={"a": 3}, dtype="fp16")
    with EmbeddedServer(ft_dir, instances=1, watch_interval=None, stop_timeout=0) as srv:
        place = srv.workdir / server_module.SHARED_WEIGHTS_DIR
        (before,) = _engines(srv)
        assert _mapped(before, place) and not _mapped(before, ft_dir)

        _, hf = _convert(tmp_path, seed=1, tp=1, tasks={"a": 3}, force=True, dtype="fp32")
        assert srv.reload() is not None
        assert _answer(srv.grpc_url, 0) == hf.greedy(PROMPT, "a", OUT_LEN, END_ID)[0]
        assert not place.exists()
        assert srv.weights_note == "mapped by every instance from the conversion's files"
        _wait_for(lambda: before not in _engines(srv), "the old instance to end")
        (after,) = _engines(srv)
        assert _mapped(after, ft_dir).keys() >= _used_files(layout.read_config(ft_dir))
