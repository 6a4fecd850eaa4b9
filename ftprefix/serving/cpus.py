"""How many cores the CPU server may use, and how it spreads its engine over them.

The cores a process may use are the fewest of: the CPUs its affinity allows (`nproc`), and its
cgroup's CPU quota (`cpu.max` in cgroup v2; `cpu.cfs_quota_us` / `cpu.cfs_period_us` in v1), which
a container's CPU limit sets (Kubernetes `resources.limits.cpu`, compose `cpus:`).

The engine runs one thread per model instance, and the server runs one instance per core (as
many as memory holds: each instance is its own process, Triton's python backend, mapping the
float32 weights from one copy they share, engine/shared_weights.py, or where the disk had no room
for it reading its own), so batches run side by side without a thread ever waiting at a
barrier for another that was descheduled. With a pool of threads per instance, every parallel step
waits for the slowest thread, and a busy neighbour process that preempts one stalls them all
(OpenMP threads spin at each barrier, then sleep). One thread also keeps the answers independent
of the machine: float sums split over more threads round differently, which can change a token
where two are nearly tied. Figures: benchmarks/cpu_server.py, README "Benchmarks".
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from ftprefix import layout
from ftprefix.errors import UserError

CGROUP_ROOT = Path("/sys/fs/cgroup")
PASSIVE = "PASSIVE"  # OpenMP's wait policy where waiting threads sleep (OMP_WAIT_POLICY)
# beyond this, more instances mostly add memory (each its own process) and start-up time
MAX_DEFAULT_INSTANCES = 8
# what an instance's process holds besides the weights: Python, torch, the activations of a batch
INSTANCE_OVERHEAD_BYTES = 384 << 20
# the default layout leaves this share of the memory it sees to everything else
MEMORY_SHARE = 0.75
# what --instances and --threads may ask for: Triton starts a process per instance (on the GPU,
# each on tp GPUs), and each starts its threads; far beyond these a start fails deep inside Triton
# or torch (out of threads, an integer overflow) instead of with a line saying what to change
MAX_INSTANCES = 256
MAX_THREADS = 1024


@dataclass(frozen=True)
class Cores:
    count: int  # cores this process may use
    seen: str  # how that was decided, for the start-up line


def _cgroup_path(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """(cgroup v2 path, cgroup v1 cpu controller path) of this process."""
    v2 = v1 = None
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (2.5 for `250000 100000`), or None."""
    v2, v1 = _cgroup_path(proc_cgroup)
    candidates = []
    if v2 is not None:
        candidates += [root / v2.lstrip("/") / "cpu.max", root / "cpu.max"]
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = root / controller
        for path in ([base / v1.lstrip("/")] if v1 else []) + [base]:
            candidates.append(path / "cpu.cfs_quota_us")
    for path in candidates:
        text = _read(path)
        if text is None:
            continue
        if path.name == "cpu.max":
            quota, _, period = text.partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or "100000")
        quota_us = int(text)
        if quota_us <= 0:
            return None
        period = _read(path.with_name("cpu.cfs_period_us"))
        return quota_us / int(period or "100000")
    return None


def usable_cores(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Cores:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_quota(root, proc_cgroup)
    if quota is not None and math.ceil(quota) < affinity:
        return Cores(max(1, math.ceil(quota)), f"cgroup CPU quota {quota:g}, nproc {affinity}")
    return Cores(affinity, f"nproc {affinity}{'' if quota is None else f', cgroup CPU quota {quota:g}'}")


def _meminfo_available(meminfo: Path) -> int | None:
    text = _read(meminfo)
    for line in (text or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _cgroup_memory_left(root: Path, proc_cgroup: Path) -> int | None:
    v2, _ = _cgroup_path(proc_cgroup)
    pairs = []
    if v2 is not None:
        pairs.append((root / v2.lstrip("/") / "memory.max", root / v2.lstrip("/") / "memory.current"))
    pairs.append((root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes"))
    for limit_path, usage_path in pairs:
        limit = _read(limit_path)
        if limit is None:
            continue
        if limit == "max" or int(limit) >= 1 << 60:  # v1 writes "no limit" as a huge number
            return None
        return max(0, int(limit) - int(_read(usage_path) or "0"))
    return None


def available_memory(
    root: Path = CGROUP_ROOT,
    proc_cgroup: Path = Path("/proc/self/cgroup"),
    meminfo: Path = Path("/proc/meminfo"),
) -> int | None:
    """Bytes this process could still take: the machine's available memory, or what is left under
    its cgroup's memory limit if that is less; None where neither can be read."""
    figures = (_meminfo_available(meminfo), _cgroup_memory_left(root, proc_cgroup))
    known = [m for m in figures if m is not None]
    return min(known) if known else None


def float32_bytes(cfg: layout.ModelConfig) -> int:
    """The base model's weights as float32, as the engine (and verify's Hugging Face) holds them."""
    return 4 * sum(math.prod(spec.shape) for spec in layout.base_tensors(cfg))


def instance_bytes(cfg: layout.ModelConfig, shared: bool = False) -> int:
    """What one engine instance holds: its process, and the base weights as float32 unless they
    are `shared` (mapped by every instance from one copy, engine/shared_weights.py)."""
    return INSTANCE_OVERHEAD_BYTES + (0 if shared else float32_bytes(cfg))


@dataclass(frozen=True)
class Layout:
    instances: int
    threads: int  # engine threads per instance
    note: str = ""  # why the default has fewer instances than cores, for the start-up line


def check_counts(instances: int | None, threads: int | None) -> None:
    """Refuse --instances or --threads (None: not given) outside 1..MAX_INSTANCES / MAX_THREADS."""
    for name, value, most in (("--instances", instances, MAX_INSTANCES), ("--threads", threads, MAX_THREADS)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
        if value is not None and value > most:
            raise UserError(f"{name} must be at most {most}, got {value}")


def choose_layout(
    cores: Cores,
    instances: int | None = None,
    threads: int | None = None,
    *,
    bytes_per_instance: int | None = None,
    memory: int | None = None,
    shared_bytes: int = 0,
) -> Layout:
    """What was asked for; by default single-threaded instances, one per usable core, at most
    MAX_DEFAULT_INSTANCES, and no more than MEMORY_SHARE of `memory` holds at `bytes_per_instance`
    each beside the `shared_bytes` all of them map once (never fewer than one). With only
    --threads given, instances fill the remaining cores."""
    check_counts(instances, threads)
    if threads is None:
        threads = 1
    if instances is not None:
        return Layout(instances=instances, threads=threads)
    instances = max(1, min(cores.count // threads, MAX_DEFAULT_INSTANCES))
    if bytes_per_instance and memory is not None:
        fit = max(1, int(memory * MEMORY_SHARE - shared_bytes) // bytes_per_instance)
        if fit < instances:
            besides = f" besides {shared_bytes / 2**30:.1f} GiB shared" if shared_bytes else ""
            note = (
                f"memory for {fit}: {bytes_per_instance / 2**30:.1f} GiB each{besides}, "
                f"{memory / 2**30:.1f} GiB available"
            )
            return Layout(instances=fit, threads=threads, note=note)
    return Layout(instances=instances, threads=threads)


def wait_passively(environ: MutableMapping[str, str] = os.environ) -> None:
    """OpenMP threads that sleep rather than spin while they wait, for the torch of this process
    (read when torch is first imported), unless OMP_WAIT_POLICY is set already. torch's pool of a
    thread per core spins at every barrier of the small steps ftprefix's own work is made of (the
    demo's training, verify's reference, a conversion's casts): on the 2-core machine of the
    README's figures the demo's training took 2-3 times as long that way, alone, and the whole demo
    3 times as long with one busy process beside it (benchmarks/torch_waits.py)."""
    environ.setdefault("OMP_WAIT_POLICY", PASSIVE)


def thread_env(threads: int, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment of the server's model processes for `threads` engine threads each: the math
    libraries' pools of that size, and OpenMP threads that sleep rather than spin while they wait
    (unless OMP_WAIT_POLICY is set already: a choice made for a machine of one's own)."""
    count = str(threads)
    return {
        "OMP_NUM_THREADS": count,
        "MKL_NUM_THREADS": count,
        "OPENBLAS_NUM_THREADS": count,
        "OMP_WAIT_POLICY": environ.get("OMP_WAIT_POLICY", PASSIVE),
    }
