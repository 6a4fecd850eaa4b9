"""The cores and memory the CPU server sees, read from files laid out as Linux lays them out (a
container's cgroup v2 or v1 hierarchy, /proc/meminfo), and the layout it picks from them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from serving_support import make_converted

from ftprefix import layout
from ftprefix.errors import UserError
from ftprefix.serving import cpus

GiB = 1 << 30


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def four_cpus(monkeypatch):
    """A process whose affinity allows 4 CPUs, whatever this machine has."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})


def test_a_kubernetes_pod_cpu_limit_in_cgroup_v2_caps_the_cores(tmp_path, four_cpus) -> None:
    # a pod's container: /proc/self/cgroup names its cgroup; limits.cpu: 1500m writes cpu.max
    _write(tmp_path / "proc-cgroup", "0::/kubepods.slice/pod1/ctr\n")
    _write(tmp_path / "fs/kubepods.slice/pod1/ctr/cpu.max", "150000 100000\n")
    assert cpus.cgroup_quota(tmp_path / "fs", tmp_path / "proc-cgroup") == 1.5
    cores = cpus.usable_cores(tmp_path / "fs", tmp_path / "proc-cgroup")
    assert cores.count == 2 and cores.seen == "cgroup CPU quota 1.5, nproc 4"


def test_inside_a_container_namespace_the_quota_is_at_the_root(tmp_path, four_cpus) -> None:
    # docker run --cpus 1 (compose `cpus: 1`): the container sees its own cgroup as /
    _write(tmp_path / "proc-cgroup", "0::/\n")
    _write(tmp_path / "fs/cpu.max", "100000 100000\n")
    assert cpus.usable_cores(tmp_path / "fs", tmp_path / "proc-cgroup").count == 1


def test_no_quota_leaves_the_affinity(tmp_path, four_cpus) -> None:
    _write(tmp_path / "proc-cgroup", "0::/user.slice\n")
    _write(tmp_path / "fs/user.slice/cpu.max", "max 100000\n")
    assert cpus.cgroup_quota(tmp_path / "fs", tmp_path / "proc-cgroup") is None
    assert cpus.usable_cores(tmp_path / "fs", tmp_path / "proc-cgroup").count == 4
    # no cgroup files at all (another OS, a masked /sys): the affinity alone
    assert cpus.usable_cores(tmp_path / "none", tmp_path / "missing").count == 4


def test_a_quota_above_the_affinity_changes_nothing(tmp_path, four_cpus) -> None:
    _write(tmp_path / "proc-cgroup", "0::/\n")
    _write(tmp_path / "fs/cpu.max", "800000 100000\n")
    assert cpus.usable_cores(tmp_path / "fs", tmp_path / "proc-cgroup").count == 4


def test_cgroup_v1_cfs_quota(tmp_path, four_cpus) -> None:
    _write(tmp_path / "proc-cgroup", "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    _write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "250000\n")
    _write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    assert cpus.cgroup_quota(tmp_path / "fs", tmp_path / "proc-cgroup") == 2.5
    assert cpus.usable_cores(tmp_path / "fs", tmp_path / "proc-cgroup").count == 3
    _write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n")  # v1's "no limit"
    assert cpus.cgroup_quota(tmp_path / "fs", tmp_path / "proc-cgroup") is None


def test_memory_is_the_least_of_the_machine_and_the_cgroup_limit(tmp_path) -> None:
    _write(tmp_path / "meminfo", f"MemTotal: {64 * GiB // 1024} kB\nMemAvailable: {8 * GiB // 1024} kB\n")
    _write(tmp_path / "proc-cgroup", "0::/\n")
    _write(tmp_path / "fs/memory.max", f"{4 * GiB}\n")
    _write(tmp_path / "fs/memory.current", f"{1 * GiB}\n")
    read = dict(root=tmp_path / "fs", proc_cgroup=tmp_path / "proc-cgroup", meminfo=tmp_path / "meminfo")
    assert cpus.available_memory(**read) == 3 * GiB
    _write(tmp_path / "fs/memory.max", "max\n")
    assert cpus.available_memory(**read) == 8 * GiB


def test_the_default_layout_is_one_thread_per_instance_one_instance_per_core() -> None:
    assert cpus.choose_layout(cpus.Cores(2, "")) == cpus.Layout(instances=2, threads=1)
    assert cpus.choose_layout(cpus.Cores(1, "")) == cpus.Layout(instances=1, threads=1)
    assert cpus.choose_layout(cpus.Cores(64, "")).instances == cpus.MAX_DEFAULT_INSTANCES
    # --threads alone: the instances fill the remaining cores
    assert cpus.choose_layout(cpus.Cores(8, ""), threads=2) == cpus.Layout(instances=4, threads=2)
    assert cpus.choose_layout(cpus.Cores(8, ""), threads=16) == cpus.Layout(instances=1, threads=16)
    # what was asked for is what runs
    assert cpus.choose_layout(cpus.Cores(2, ""), instances=6, threads=3) == cpus.Layout(6, 3)


def test_the_default_layout_starts_no_more_instances_than_memory_holds() -> None:
    layout_ = cpus.choose_layout(cpus.Cores(16, ""), bytes_per_instance=14 * GiB, memory=60 * GiB)
    assert (layout_.instances, layout_.threads) == (3, 1)  # 3 x 14 GiB fit in 75% of 60 GiB
    assert "memory for 3" in layout_.note
    tight = cpus.choose_layout(cpus.Cores(16, ""), bytes_per_instance=14 * GiB, memory=8 * GiB)
    assert tight.instances == 1  # one always starts: the engine says itself if it cannot load
    # asked for explicitly: the user knows their machine
    assert (
        cpus.choose_layout(cpus.Cores(16, ""), 8, bytes_per_instance=14 * GiB, memory=8 * GiB).instances == 8
    )
    # weights every instance maps from one copy count once: 14 GiB shared, then 0.5 GiB each
    shared = cpus.choose_layout(
        cpus.Cores(16, ""), bytes_per_instance=GiB // 2, memory=20 * GiB, shared_bytes=14 * GiB
    )
    assert shared.instances == 2 and "memory for 2: 0.5 GiB each besides 14.0 GiB shared" in shared.note
    roomy = cpus.choose_layout(
        cpus.Cores(16, ""), bytes_per_instance=GiB // 2, memory=60 * GiB, shared_bytes=14 * GiB
    )
    assert roomy == cpus.Layout(instances=cpus.MAX_DEFAULT_INSTANCES, threads=1)


@pytest.mark.parametrize(
    ("instances", "threads", "message"),
    [
        (0, None, "--instances must be at least 1, got 0"),
        (None, 0, "--threads must be at least 1, got 0"),
        # Triton died starting 100,000 instances (out of threads); torch overflowed on 10**20 threads
        (100_000, None, "--instances must be at most 256, got 100000"),
        (None, 10**20, f"--threads must be at most 1024, got {10**20}"),
    ],
)
def test_impossible_layouts_are_refused(instances, threads, message) -> None:
    with pytest.raises(UserError, match=f"^{message}$"):
        cpus.choose_layout(cpus.Cores(2, ""), instances=instances, threads=threads)


def test_an_instance_holds_the_base_weights_as_float32(tmp_path) -> None:
    _model, ft_dir, _ = make_converted(tmp_path, {"smile": 2}, seed=1)
    cfg = layout.read_config(ft_dir)
    prefix_files = {n for t in cfg.tasks for n in layout.prefix_file_names(t.name, cfg.tensor_para_size)}
    on_disk = sum(p.stat().st_size for p in ft_dir.glob("*.bin") if p.name not in prefix_files)
    float32 = on_disk // cfg.np_dtype.itemsize * 4
    assert cpus.instance_bytes(cfg) == float32 + cpus.INSTANCE_OVERHEAD_BYTES


def test_model_processes_get_single_threaded_math_libraries_that_sleep_while_waiting() -> None:
    env = cpus.thread_env(1, environ={})
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert cpus.thread_env(4, environ={"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.parametrize(
    ("policy", "reported"),
    [(None, ("PASSIVE", "0")), ("ACTIVE", ("ACTIVE", "30000000000"))],
    ids=["default", "set-by-the-user"],
)
def test_the_commands_torch_threads_sleep_while_waiting_unless_told_otherwise(
    tmp_path, policy, reported
) -> None:
    """As libgomp itself reports its settings (OMP_DISPLAY_ENV): without a policy of the user's, the
    OpenMP threads of the `ftprefix` command's torch sleep at once (no spin count), where torch's
    default spins 300,000 times at every barrier (benchmarks/torch_waits.py: the demo's training
    took 2x as long beside one busy process that way)."""
    import subprocess
    import sys

    import torch

    from ftprefix.demo.toy import build_model, random_prefix

    build_model(tmp_path / "hf", hidden_size=32, num_heads=4, num_layers=1)
    torch.save(random_prefix(4, 1, 32, seed=1), tmp_path / "task.pt")  # read with torch
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    argv = [sys.executable, "-m", "ftprefix.cli", "convert", "--model", str(tmp_path / "hf")]
    proc = subprocess.run(
        [*argv, "--prefix", f"task={tmp_path / 'task.pt'}", "--out", str(tmp_path / "ft")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"OMP_WAIT_POLICY = '{reported[0]}'" in proc.stderr
    assert f"GOMP_SPINCOUNT = '{reported[1]}'" in proc.stderr
