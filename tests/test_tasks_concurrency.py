"""No data lost when several `ftprefix tasks` commands run at once, or one is killed midway.

Real processes, as CI pipelines run them: the commands serialise on the model lock; a SIGKILL at
any moment leaves a model the engine loads, whose task table matches its files.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from convert_support import tree_digest

from ftprefix import layout, locking
from ftprefix.cli import main
from ftprefix.converter.tasks import leftovers
from ftprefix.demo.toy import build_model, random_prefix
from ftprefix.engine import Engine

LAYERS, HIDDEN, HEADS = 2, 32, 4


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hf") / "base"
    build_model(
        d, hidden_size=HIDDEN, num_heads=HEADS, num_layers=LAYERS, vocab_size=64, with_tokenizer=False
    )
    return d


@pytest.fixture
def out(tmp_path: Path, hf_dir: Path) -> Path:
    np.save(tmp_path / "first.npy", random_prefix(3, LAYERS, HIDDEN, seed=1).numpy())
    argv = ["convert", "--model", str(hf_dir), "--prefix", str(tmp_path / "first.npy"), "--tp", "2"]
    assert main([*argv, "--dtype", "fp32", "--out", str(tmp_path / "out")]) == 0
    return tmp_path / "out"


def _prefix(tmp_path: Path, name: str, length: int, seed: int) -> Path:
    path = tmp_path / f"{name}.npy"
    np.save(path, random_prefix(length, LAYERS, HIDDEN, seed=seed).numpy())
    return path


def _ftprefix(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ftprefix.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _consistent(out: Path) -> list[str]:
    """The model loads in the engine, every task's files are whole, no file is unaccounted for."""
    ft_dir = layout.ft_dir(out, 2)
    cfg = layout.read_config(ft_dir)
    engine = Engine.load(ft_dir)
    for task in cfg.tasks:  # each prefix reads back with its recorded length and runs
        engine.logits([[1, 2, 3]], [task.id])
    return cfg.tasks.names


def test_eight_concurrent_adds_all_land_with_distinct_ids(out: Path, tmp_path: Path) -> None:
    names = [f"t{i}" for i in range(8)]
    procs = [
        _ftprefix("tasks", "add", str(out), "--prefix", f"{n}={_prefix(tmp_path, n, 2 + i, i)}")
        for i, n in enumerate(names)
    ]
    reported = {}
    for name, proc in zip(names, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        row = next(line.split() for line in stdout.splitlines() if line.split()[1:2] == [name])
        reported[name] = int(row[0])
    table = _consistent(out)
    assert sorted(table) == sorted(["first", *names])
    assert {name: table.index(name) for name in names} == reported  # the ids the commands printed
    assert leftovers(layout.ft_dir(out, 2), layout.read_config(layout.ft_dir(out, 2))) == []


def test_interleaved_adds_and_removes_end_in_the_reported_table(out: Path, tmp_path: Path) -> None:
    setup = ",".join(f"r{i}={_prefix(tmp_path, f'r{i}', 3, 20 + i)}" for i in range(3))
    assert main(["tasks", "add", str(out), "--prefix", setup]) == 0
    procs = [
        _ftprefix("tasks", "add", str(out), "--prefix", f"a0={_prefix(tmp_path, 'a0', 2, 30)}"),
        _ftprefix("tasks", "remove", str(out), "r0"),
        _ftprefix("tasks", "add", str(out), "--prefix", f"a1={_prefix(tmp_path, 'a1', 4, 31)}"),
        _ftprefix("tasks", "remove", str(out), "r2", "first"),
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    assert sorted(_consistent(out)) == ["a0", "a1", "r1"]
    files = {p.name for p in layout.ft_dir(out, 2).glob("model.prefix_prompt.*")}
    assert files == {f for t in ("a0", "a1", "r1") for f in layout.prefix_file_names(t, 2)}


def test_sigkill_at_any_moment_leaves_a_loadable_consistent_model(out: Path, tmp_path: Path, capsys) -> None:
    big = _prefix(tmp_path, "big", 3000, 7)  # 1.5 MB, so a kill can land while it is written
    ft_dir = layout.ft_dir(out, 2)
    start = time.monotonic()
    probe = _ftprefix("tasks", "add", str(out), "--prefix", f"probe={big}")
    assert probe.wait(timeout=300) == 0
    duration = time.monotonic() - start
    rng = random.Random(0)
    for attempt in range(6):
        proc = _ftprefix("tasks", "add", str(out), "--prefix", f"k{attempt}={big}")
        time.sleep(rng.uniform(0.5, 1.0) * duration)  # fault injection: SIGKILL at a random moment
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        table = _consistent(out)
        cfg = layout.read_config(ft_dir)
        named = {f for t in cfg.tasks for f in layout.prefix_file_names(t.name, 2)}
        on_disk = {p.name for p in ft_dir.glob("model.prefix_prompt.*")}
        assert named <= on_disk and on_disk - named == {p.name for p in leftovers(ft_dir, cfg)}
        capsys.readouterr()
        assert main(["tasks", "list", str(out)]) == 0
        listed = capsys.readouterr().out
        assert all(name in listed for name in table)
        assert ("left by an interrupted command" in listed) == bool(on_disk - named)
    # the next change removes whatever the killed commands left
    assert main(["tasks", "add", str(out), "--prefix", f"last={_prefix(tmp_path, 'last', 2, 9)}"]) == 0
    assert leftovers(ft_dir, layout.read_config(ft_dir)) == []
    assert "last" in _consistent(out)


def test_a_second_writer_waits_then_fails_in_one_line(out: Path, tmp_path: Path, capsys) -> None:
    before = tree_digest(out)
    with locking.exclusive(out):
        rc = main(["tasks", "remove", str(out), "first", "--wait", "0.3"])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did not finish within 0.3 s" in err and "--wait" in err
    assert tree_digest(out) == before
