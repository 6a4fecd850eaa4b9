"""ftprefix's own torch work on one thread and with torch's pool under each OpenMP wait policy,
alone and beside one busy process, side by side in one run: the demo's training (its base model,
then a prefix per task: the many small steps that ftprefix's own work is made of), each setting in
a fresh process, the median of `--rounds` rounds (the order rotates). The busy neighbour spins on
one core for as long as each measurement runs (started and stopped here). A run that takes longer
than `--cap` seconds is stopped there and counted as the cap (its figures then read "> cap"):
beside a busy process, threads that spin can take minutes over what takes seconds.

Settings: what the demo does now (one thread while it trains, `ftprefix.demo.training.one_thread`,
in the `ftprefix` command's environment: OMP_WAIT_POLICY=PASSIVE, cli.main), and as before, torch's
pool of a thread per core, with torch's default wait policy (OMP_WAIT_POLICY unset: libgomp's
threads spin a while at each barrier, then sleep) and with PASSIVE (they sleep at once).

    .venv/bin/python benchmarks/torch_waits.py [--steps 300] [--rounds 3] [--cap 120]
        [--settings one-thread default passive]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

# name -> (environment, whether torch keeps its pool of a thread per core while the demo trains)
SETTINGS = {
    "now: one thread (OMP_WAIT_POLICY=PASSIVE)": ({"OMP_WAIT_POLICY": "PASSIVE"}, False),
    "before: torch's pool, OMP_WAIT_POLICY unset": ({}, True),
    "before: torch's pool, OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, True),
}
NOW = "now: one thread (OMP_WAIT_POLICY=PASSIVE)"
SHORT_NAMES = dict(zip(("one-thread", "default", "passive"), SETTINGS, strict=True))
WORK = """
import contextlib, sys, tempfile, time
from ftprefix.demo import training
if sys.argv[2] == "pool":  # as the demo trained before: torch's threads, as many as it starts with
    training.one_thread = contextlib.nullcontext
with tempfile.TemporaryDirectory() as workdir:
    started = time.perf_counter()
    training.train_demo_tasks(workdir, steps=int(sys.argv[1]))
    print(time.perf_counter() - started)
"""
SPIN = "while True:\n    pass\n"


def measure(setting: tuple[dict[str, str], bool], steps: int, busy: bool, cap: float) -> float | None:
    """Seconds the demo's training takes in a fresh process with `setting` (its environment, and
    whether torch keeps its pool), or None where it took longer than `cap` seconds (then it is
    stopped)."""
    environment, pool = setting
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    neighbour = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        out = subprocess.run(
            [sys.executable, "-c", WORK, str(steps), "pool" if pool else "one"],
            env={**env, **environment},
            capture_output=True,
            text=True,
            check=True,
            timeout=cap,
        ).stdout
    except subprocess.TimeoutExpired:
        return None
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    return float(out.split()[-1])


def _median(values: list[float | None], cap: float) -> tuple[float, bool]:
    """The median, counting a stopped run as the cap; and whether the median is a stopped run."""
    median = statistics.median([cap if v is None else v for v in values])
    return median, median >= cap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per model (the demo's: 300)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cap", type=float, default=120.0, help="seconds a run may take (default 120)")
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=SHORT_NAMES,
        default=list(SHORT_NAMES),
        help="which settings to measure (default: all three; the columns 'x now' need one-thread)",
    )
    args = parser.parse_args()
    if "one-thread" not in args.settings:
        parser.error("--settings must include one-thread, the setting the other rows are compared with")

    names = [SHORT_NAMES[short] for short in SHORT_NAMES if short in args.settings]
    samples: dict[tuple[str, bool], list[float | None]] = {}
    started = time.monotonic()
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for busy in (False, True):
            for name in order:
                samples.setdefault((name, busy), []).append(
                    measure(SETTINGS[name], args.steps, busy, args.cap)
                )
    seconds = {key: _median(values, args.cap) for key, values in samples.items()}

    print(
        f"the demo's training, {args.steps} steps per model, median of {args.rounds} rounds "
        f"({os.cpu_count()} cores; {time.monotonic() - started:.0f} s in all); busy: one process "
        "spinning beside it"
    )
    print("| setting | s alone | s busy | busy / alone | alone: x now | busy: x now |")
    print("|---|---|---|---|---|---|")
    now_alone, now_busy = seconds[(NOW, False)][0], seconds[(NOW, True)][0]
    for name in names:
        (alone, alone_capped), (busy, busy_capped) = seconds[(name, False)], seconds[(name, True)]
        more = ">" if busy_capped and not alone_capped else ""  # a lower bound of a ratio
        print(
            f"| {name} | {_figure(alone, alone_capped)} | {_figure(busy, busy_capped)} "
            f"| {more}{busy / alone:.2f} | {alone / now_alone:.2f} | {more}{busy / now_busy:.2f} |"
        )
    stopped = [
        f"{name}, {'busy' if busy else 'alone'}: {sum(v is None for v in values)} of {len(values)}"
        for (name, busy), values in samples.items()
        if None in values
    ]
    print(f"stopped at {args.cap:g} s: {'; '.join(stopped) or 'none'}")


def _figure(seconds: float, capped: bool) -> str:
    return f"> {seconds:.0f}" if capped else f"{seconds:.1f}"


if __name__ == "__main__":
    main()
