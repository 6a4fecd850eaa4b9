"""`ftprefix tasks list|add|remove`: the task table changes, the base weights never do; and no data
is lost when several commands run at once (real processes, as CI pipelines run them: they serialise
on the model lock) or one is killed midway (the model still loads and its table matches its files)."""

from __future__ import annotations

import configparser
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from convert_support import hf_json, read_prefix_files, tree_digest
from serving_support import has_open, wait_until_open

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
        d, hidden_size=HIDDEN, num_heads=HEADS, num_layers=LAYERS, vocab_size=64, with_tokenizer=False, seed=5
    )
    return d


@pytest.fixture
def converted(tmp_path: Path, hf_dir: Path) -> Path:
    torch.save(random_prefix(3, LAYERS, HIDDEN, seed=1), tmp_path / "first.pt")
    out = tmp_path / "out"
    argv = ["convert", "--model", str(hf_dir), "--prefix", str(tmp_path / "first.pt"), "--tp", "2"]
    assert main([*argv, "--dtype", "fp16", "--out", str(out)]) == 0
    return out


def _base_digest(out: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digest(out).items() if "prefix_prompt" not in k and not k.endswith(".ini")}


def _task_table(out: Path) -> list[tuple[str, str]]:
    ini = configparser.ConfigParser()
    ini.read(out / "2-gpu/config.ini")
    n = int(ini["gptneox"].get("num_tasks", "0"))
    assert ini["gptneox"].get("prompt_learning_type") == ("2" if n else None)
    return [(ini[f"task_{i}"]["task_name"], ini[f"task_{i}"]["prompt_length"]) for i in range(n)]


def test_add_then_remove_leaves_base_weights_byte_identical(converted, hf_dir, tmp_path, capsys):
    base_before = _base_digest(converted)
    second = random_prefix(4, LAYERS, HIDDEN, seed=2)
    torch.save(second, tmp_path / "second.pt")
    np.save(tmp_path / "soft.npy", np.random.default_rng(0).standard_normal((2, HIDDEN)).astype(np.float32))
    capsys.readouterr()

    # DIR may be the out dir or its <tp>-gpu dir
    argv = [
        "tasks",
        "add",
        str(converted / "2-gpu"),
        "--prefix",
        f"{tmp_path / 'second.pt'},{tmp_path / 'soft.npy'}",
    ]
    assert main([*argv, "--model", str(hf_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].split()[:4] == ["1", "second", "prefix", "4"]
    assert out[3].split()[:5] == ["2", "soft", "soft", "prompt", "2"]
    assert _task_table(converted) == [("first", "3"), ("second", "4"), ("soft", "2")]
    got = read_prefix_files(converted / "2-gpu", "second", hf_json(hf_dir), 2, "fp16", 4)
    np.testing.assert_allclose(got, second.numpy().reshape(4, LAYERS, 2, HEADS, 8), atol=2e-3, rtol=2e-3)

    assert main(["tasks", "list", str(converted)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split() for line in listing[2:5]] == [
        ["0", "first", "3"],
        ["1", "second", "4"],
        ["2", "soft", "2"],
    ]

    # removing retires the slot: no other id moves, and the id is never given again
    assert main(["tasks", "remove", str(converted), "first"]) == 0
    msg = capsys.readouterr().out
    assert "removed 1 task(s): first (id 0)" in msg and "every other id stays" in msg
    assert _task_table(converted) == [("_retired.0", "1"), ("second", "4"), ("soft", "2")]
    assert not list((converted / "2-gpu").glob("model.prefix_prompt.first.*"))
    placeholder = read_prefix_files(converted / "2-gpu", "_retired.0", hf_json(hf_dir), 2, "fp16", 1)
    assert not placeholder.any()
    assert main(["tasks", "add", str(converted), "--prefix", f"again={tmp_path / 'second.pt'}"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[:2] == ["3", "again"]
    assert main(["tasks", "list", str(converted)]) == 0
    listing = capsys.readouterr().out
    assert "(retired: first)" in listing and "3 task(s) and 1 retired slot(s)" in listing

    assert main(["tasks", "remove", str(converted), "second", "soft", "again"]) == 0
    assert [name for name, _ in _task_table(converted)] == [f"_retired.{i}" for i in range(4)]
    # compact: the one command that renumbers
    assert main(["tasks", "compact", str(converted)]) == 0
    assert _task_table(converted) == []
    assert not list((converted / "2-gpu").glob("model.prefix_prompt.*"))
    assert _base_digest(converted) == base_before
    assert not [p for p in (converted / "2-gpu").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["add", "{out}", "--prefix", "first={ckpt}"], "duplicate task name 'first' (already in the model)"),
        (["add", "{out}", "--prefix", "bad name={ckpt}"], "task name 'bad name' cannot be read back"),
        (
            ["add", "{out}", "--prefix", "{soft}"],
            "a soft prompt needs the base model to convert; pass --model",
        ),
        (
            ["add", "{out}", "--prefix", "{deep}"],
            "task deep: prefix shape [3, 192] does not match the base model",
        ),
        (["remove", "{out}", "nope"], "unknown task 'nope'; the tasks are: 'first'"),
        (["remove", "{out}", "first", "first"], "task 'first' is given twice; name each task to remove once"),
        (["add", "{out}", "--prefix", "_retired.7={ckpt}"], "are the slots of removed tasks"),
        (["list", "{tmp}"], "is not a converted model"),
    ],
)
def test_bad_task_changes_are_refused_and_change_nothing(converted, tmp_path, capsys, argv, message):
    torch.save(random_prefix(3, LAYERS, HIDDEN), tmp_path / "ckpt.pt")
    torch.save(random_prefix(3, 3, HIDDEN), tmp_path / "deep.pt")
    torch.save(torch.randn(2, HIDDEN), tmp_path / "soft.pt")
    paths = {
        "out": converted,
        "ckpt": tmp_path / "ckpt.pt",
        "deep": tmp_path / "deep.pt",
        "soft": tmp_path / "soft.pt",
        "tmp": tmp_path,
    }
    before = tree_digest(converted)
    capsys.readouterr()
    rc = main(["tasks", *(a.format(**paths) for a in argv)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("ftprefix tasks: error: ") and message in err[0]
    assert tree_digest(converted) == before


@pytest.mark.parametrize(
    ("argv", "command", "unknown"),
    [
        (["tasks", "add", "{out}", "{ckpt}"], "tasks add", "{ckpt}"),  # a checkpoint without --prefix
        (["tasks", "list", "{out}", "--tp", "2"], "tasks list", "--tp 2"),
        (["convert", "--model", "{out}", "--out", "{out}", "--bogus"], "convert", "--bogus"),
    ],
)
def test_an_argument_no_command_takes_is_refused_with_that_command_s_usage(
    converted: Path, tmp_path: Path, capsys, argv: list[str], command: str, unknown: str
) -> None:
    """The top level's usage (`ftprefix [-h] [--version] COMMAND ...`) said nothing of what the
    command takes."""
    before = tree_digest(converted)
    capsys.readouterr()
    paths = {"out": converted, "ckpt": tmp_path / "ckpt.pt"}
    with pytest.raises(SystemExit) as exited:
        main([a.format(**paths) for a in argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: ftprefix {command} [-h]")
    assert (
        err.splitlines()[-1]
        == f"ftprefix {command}: error: unrecognized arguments: {unknown.format(**paths)}"
    )
    assert tree_digest(converted) == before


# -- concurrent and interrupted commands ----------------------------------------------------


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
    """The model loads in the engine, every slot's files are whole (a retired slot's placeholder
    too, as FT loads them all); returns the live tasks' names."""
    ft_dir = layout.ft_dir(out, 2)
    cfg = layout.read_config(ft_dir)
    engine = Engine.load(ft_dir)
    for task in cfg.tasks:  # each prefix reads back with its recorded length and runs
        engine.logits([[1, 2, 3]], [task.id])
    return cfg.tasks.names


def test_eight_concurrent_adds_all_land_with_distinct_ids(converted: Path, tmp_path: Path) -> None:
    out = converted
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
    assert sorted(_consistent(out)) == sorted(["first", *names])
    tasks = layout.read_config(layout.ft_dir(out, 2)).tasks
    assert {name: tasks.find(name).id for name in names} == reported  # the ids the commands printed
    assert leftovers(layout.ft_dir(out, 2), layout.read_config(layout.ft_dir(out, 2))) == []


def test_interleaved_adds_and_removes_end_in_the_reported_table(converted: Path, tmp_path: Path) -> None:
    out = converted
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
    tasks = layout.read_config(layout.ft_dir(out, 2)).tasks
    # every id kept what it meant: r1 is still 2, the removed tasks' slots are retired
    assert tasks.find("r1").id == 2 and {t.removed for t in tasks.retired} == {"first", "r0", "r2"}
    files = {p.name for p in layout.ft_dir(out, 2).glob("model.prefix_prompt.*")}
    assert files == {f for t in tasks for f in layout.prefix_file_names(t.name, 2)}


def test_sigkill_at_any_moment_leaves_a_loadable_consistent_model(
    converted: Path, tmp_path: Path, capsys
) -> None:
    out = converted
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
        # a kill between staging config.ini and renaming it into place leaves the staged copy
        staged = {p.name for p in ft_dir.glob(".config.ini.*.tmp")}
        left = (on_disk - named) | staged
        assert named <= on_disk and left == {p.name for p in leftovers(ft_dir, cfg)}
        capsys.readouterr()
        assert main(["tasks", "list", str(out)]) == 0
        listed = capsys.readouterr().out
        assert all(name in listed for name in table)
        assert ("left by an interrupted command" in listed) == bool(left)
    # the next change removes whatever the killed commands left
    assert main(["tasks", "add", str(out), "--prefix", f"last={_prefix(tmp_path, 'last', 2, 9)}"]) == 0
    assert leftovers(ft_dir, layout.read_config(ft_dir)) == []
    assert "last" in _consistent(out)


def test_a_conversion_waiting_for_one_that_failed_writes_the_output_the_failed_one_made(
    hf_dir: Path, tmp_path: Path
) -> None:
    """The failed conversion removes the output directory it made, in which the other one waited
    for the lock: the other makes it again and converts (it raised FileNotFoundError)."""
    big = _prefix(tmp_path, "big", 3000, 7)  # written under the lock: long enough to stop it there
    for attempt in range(5):
        out = tmp_path / f"new{attempt}" / "out"
        lock_file = out / layout.LOCK_FILE
        argv = ["convert", "--model", str(hf_dir), "--prefix", f"big={big}", "--tp", "2", "--dtype", "fp16"]
        failing = _ftprefix(*argv, "--out", str(out))
        while failing.poll() is None and not out.exists():
            time.sleep(0.01)  # polling for it to reach the lock: it makes --out just before
        while failing.poll() is None and not has_open(failing.pid, lock_file):
            pass  # it holds the lock for milliseconds: no sleep between looks
        os.kill(failing.pid, signal.SIGSTOP)
        if not has_open(failing.pid, lock_file):  # done before it was stopped: try again
            os.kill(failing.pid, signal.SIGCONT)
            failing.communicate(timeout=60)
            continue
        waiting = _ftprefix(*argv, "--out", str(out))
        wait_until_open(waiting, lock_file)
        os.kill(failing.pid, signal.SIGTERM)  # it fails holding the lock, as on Ctrl-C
        os.kill(failing.pid, signal.SIGCONT)
        _, err = failing.communicate(timeout=60)
        assert failing.returncode == 128 + signal.SIGTERM and "terminated" in err, err
        _, err = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, err
        assert _consistent(out) == ["big"] and [p.name for p in out.iterdir()] == ["2-gpu"]
        return
    pytest.fail("no conversion was stopped while it held the lock, in 5 tries")


def test_a_second_writer_waits_then_fails_in_one_line(converted: Path, tmp_path: Path, capsys) -> None:
    out = converted
    before = tree_digest(out)
    with locking.exclusive(out):
        rc = main(["tasks", "remove", str(out), "first", "--wait", "0.3"])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did not finish within 0.3 s" in err and "--wait" in err
    assert tree_digest(out) == before


def test_a_file_system_that_takes_no_locks_is_one_line_and_changes_nothing(
    converted: Path, hf_dir: Path, tmp_path: Path, capsys, request
) -> None:
    """On a file system without locks (an NFS client without rpc.statd) writers refuse; readers (a
    server loading the task table, triton-repo reading the conversion) read."""
    before = tree_digest(converted)
    torch.save(random_prefix(2, LAYERS, HIDDEN, seed=2), tmp_path / "second.pt")
    new = tmp_path / "new" / "out"
    request.getfixturevalue("file_system_without_locks")  # once the model is converted, with locks
    for argv in (
        ["tasks", "add", str(converted), "--prefix", f"second={tmp_path / 'second.pt'}"],
        ["tasks", "remove", str(converted), "first"],
        ["convert", "--model", str(hf_dir), "--prefix", str(tmp_path / "second.pt"), "--out", str(new)],
    ):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "No locks available" in err and "rpc.statd" in err, err
    assert tree_digest(converted) == before and not (converted / layout.LOCK_FILE).exists()
    assert not (tmp_path / "new").exists()  # nor the directories convert made for its output
    with locking.shared(converted):
        assert _task_table(converted) == [("first", "3")]
    assert tree_digest(converted) == before and not (converted / layout.LOCK_FILE).exists()


# -- what FasterTransformer itself reads ------------------------------------------------------


def _ini_as_ft_reads_it(path: Path) -> dict[str, dict[str, str]]:
    """3rdparty/INIReader.h: fgets into a 200-byte buffer (a longer line is cut and its rest read as
    another line), `[section]`, `key = value` split at the first '=' or ':', whitespace trimmed."""
    sections: dict[str, dict[str, str]] = {}
    current = ""
    with open(path, "rb") as f:
        data = f.read()
    lines: list[bytes] = []
    for raw in data.split(b"\n"):
        while len(raw) >= 199:  # fgets reads at most 199 bytes, the newline counting as one
            lines.append(raw[:199])
            raw = raw[199:]
        lines.append(raw)
    for raw in lines:
        line = raw.decode("utf-8").strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, {})
        elif line and line[0] not in ";#":
            split = min(i for i in (line.find("="), line.find(":"), len(line)) if i >= 0)
            sections.setdefault(current, {})[line[:split].strip()] = line[split + 1 :].strip()
    return sections


def _ft_loads_every_slot(ft_dir: Path, tp: int) -> list[str]:
    """GptNeoXTritonModel.cc reads task_0 .. task_{num_tasks-1} (task_name, prompt_length);
    GptNeoXWeight.cc loads model.prefix_prompt.<task_name>.weight.<rank>.bin of
    layers x 2 x heads/tp x prompt_length x head_dim values for every one of them."""
    ini = _ini_as_ft_reads_it(ft_dir / "config.ini")
    model = ini["gptneox"]
    per_token = int(model["num_layer"]) * 2 * int(model["head_num"]) // tp * int(model["size_per_head"])
    itemsize = 2 if model["weight_data_type"] == "fp16" else 4
    names = []
    for i in range(int(model.get("num_tasks", "0"))):
        task = ini[f"task_{i}"]
        name, length = task["task_name"], int(task["prompt_length"])
        for rank in range(tp):
            path = ft_dir / f"model.prefix_prompt.{name}.weight.{rank}.bin"
            assert path.stat().st_size == per_token * length * itemsize, path.name
        names.append(name)
    return names


def test_ft_reads_every_slot_retired_ones_included(converted: Path, tmp_path: Path) -> None:
    adds = ",".join(f"s{i}={_prefix(tmp_path, f's{i}', 2 + i, 40 + i)}" for i in range(4))
    assert main(["tasks", "add", str(converted), "--prefix", adds]) == 0
    assert main(["tasks", "remove", str(converted), "s1", "first"]) == 0
    ft_dir = layout.ft_dir(converted, 2)
    assert _ft_loads_every_slot(ft_dir, 2) == ["_retired.0", "s0", "_retired.2", "s2", "s3"]
    # a task name of the longest length FT reads back, removed: its slot's line still fits
    long_name = "n" * layout.MAX_TASK_NAME
    assert (
        main(["tasks", "add", str(converted), "--prefix", f"{long_name}={_prefix(tmp_path, 'l', 2, 50)}"])
        == 0
    )
    assert main(["tasks", "remove", str(converted), long_name]) == 0
    assert _ft_loads_every_slot(ft_dir, 2)[-1] == "_retired.5"
    assert layout.read_config(ft_dir).tasks[5].removed == long_name


def test_convert_force_keeps_the_ids_of_tasks_that_remain(hf_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    paths = {n: _prefix(tmp_path, n, 2 + i, 60 + i) for i, n in enumerate(["a", "b", "c", "d"])}

    def convert(*names: str, force: bool = False) -> list[tuple[str, str]]:
        argv = ["convert", "--model", str(hf_dir), "--tp", "2", "--dtype", "fp16", "--out", str(out)]
        argv += ["--prefix", ",".join(f"{n}={paths[n]}" for n in names), *(["--force"] if force else [])]
        assert main(argv) == 0
        return _task_table(out)

    assert [n for n, _ in convert("a", "b", "c")] == ["a", "b", "c"]
    # b and c stay 1 and 2 whatever order they are given in; a's slot is retired; d is new
    assert [n for n, _ in convert("d", "c", "b", force=True)] == ["_retired.0", "b", "c", "d"]
    assert layout.read_config(layout.ft_dir(out, 2)).tasks[0].removed == "a"
    assert _ft_loads_every_slot(layout.ft_dir(out, 2), 2) == ["_retired.0", "b", "c", "d"]
    assert [n for n, _ in convert("b", "a", force=True)] == [
        "_retired.0",
        "b",
        "_retired.2",
        "_retired.3",
        "a",
    ]


def test_a_reader_that_stops_reading_ends_the_command_quietly(converted: Path) -> None:
    """`ftprefix tasks list DIR | head -1`: what printed the list met a closed pipe, and Python
    printed a BrokenPipeError traceback, exit 120. Now it ends as `cat` does: no word, the status of
    a command SIGPIPE stopped."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ftprefix", "tasks", "list", str(converted)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (128 + signal.SIGPIPE, "")


def test_commands_that_do_not_talk_to_a_server_load_no_client(converted: Path) -> None:
    """The client (tritonclient, grpc) is loaded by the commands that use it: loading it for every
    command, only to name its errors, took a third of `tasks list`'s time."""
    code = (
        "import sys; from ftprefix.cli import main; status = main(sys.argv[1:]); "
        "loaded = sorted(m for m in ('ftprefix.client', 'tritonclient', 'grpc') if m in sys.modules); "
        "print(loaded, file=sys.stderr); sys.exit(status or (1 if loaded else 0))"
    )
    for argv in (["tasks", "list", str(converted)], ["tasks", "list", str(converted / "nope")]):
        done = subprocess.run(
            [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.stderr.splitlines()[-1] == "[]", done.stderr
    # and a command that does use it still says its errors in one line (no server listens there)
    from ftprefix.serving.server import free_port

    done = subprocess.run(
        [sys.executable, "-m", "ftprefix", "tasks", "list", "--url", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "no Triton server reachable" in done.stderr
