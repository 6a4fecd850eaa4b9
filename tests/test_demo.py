"""`ftprefix demo` end to end: train, convert (tp 2, fp16), verify, real Triton on CPU, client per task."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile

import pytest
import torch
from background import SCRATCH, Finished
from serving_support import signals_as_in_a_terminal

from ftprefix.cli import main
from ftprefix.demo.training import QUESTIONS_AND_ANSWERS, shout, smile, train_demo_tasks


@pytest.mark.parametrize(
    "tokenizer",
    [
        # the whole command as a user types it, beside the rest of the suite (background.py): it
        # trains for seconds on one thread and asserts no figure that other work could change
        pytest.param(
            kind,
            marks=pytest.mark.background(
                sys.executable, "-m", "ftprefix", "demo", "--workdir", SCRATCH, "--tokenizer", kind
            ),
        )
        for kind in ("bpe", "sentencepiece")
    ],
)
def test_demo_answers_differ_per_task_as_trained(background_run: Finished, tokenizer: str) -> None:
    assert background_run.returncode == 0, background_run.stderr[-2000:]
    workdir = background_run.scratch
    assert workdir is not None
    # sentencepiece: rinna's kind of tokenizer, trained on the spot and read as rinna's models are
    config = json.loads((workdir / "base" / "tokenizer_config.json").read_text())
    if tokenizer == "sentencepiece":
        assert config["tokenizer_class"] == "T5Tokenizer" and (workdir / "base" / "spiece.model").is_file()
    else:
        assert (workdir / "base" / "tokenizer.json").is_file()
    err = background_run.stderr
    assert "Writing model shards" not in err and "it/s]" not in err  # no library's progress bars
    lines = background_run.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("prompt "))
    assert "(base model)" in lines[header] and "shout" in lines[header] and "smile" in lines[header]
    table = "\n".join(lines[header : header + 5])
    # Each task's answer is what its prefix was trained to say, served through the converted files.
    for question, answer in QUESTIONS_AND_ANSWERS[:3]:
        row = next(line for line in table.splitlines() if line.startswith(question))
        expected = [question, answer.strip(), shout(answer).strip(), smile(answer).strip()]
        assert re.split(r"\s{2,}", row) == expected
    # The converted artefacts a user would deploy are kept in --workdir.
    assert (workdir / "ft" / "2-gpu" / "config.ini").is_file()
    assert sorted(p.name for p in (workdir / "ft" / "2-gpu").glob("model.prefix_prompt.*.bin")) == [
        "model.prefix_prompt.shout.weight.0.bin",
        "model.prefix_prompt.shout.weight.1.bin",
        "model.prefix_prompt.smile.weight.0.bin",
        "model.prefix_prompt.smile.weight.1.bin",
    ]


def test_the_demos_training_runs_on_one_thread_and_gives_the_process_its_threads_back(tmp_path):
    """A thread pool spends more waiting than computing on models this small (one_thread); the
    setting is the process's, so a caller's own must come back once training ends."""
    seen = []
    real = torch.optim.Adam

    def noting_threads(*args, **kwargs):  # the optimizer of each training: base, then each task
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.optim, "Adam", noting_threads)
            train_demo_tasks(tmp_path, steps=1)
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_a_toy_model_is_saved_without_a_progress_bar_and_the_callers_setting_is_kept(tmp_path, capsys):
    from transformers.utils import logging as hf_logging

    from ftprefix.demo.toy import build_model

    shown = hf_logging.is_progress_bar_enabled()  # other tests' commands (verify) turn it off
    try:
        for setting in (hf_logging.enable_progress_bar, hf_logging.disable_progress_bar):
            setting()
            before = hf_logging.is_progress_bar_enabled()
            build_model(tmp_path / str(before), num_layers=1, hidden_size=16, num_heads=2, vocab_size=64)
            assert (tmp_path / str(before) / "config.json").is_file()
            assert capsys.readouterr().err == ""
            assert hf_logging.is_progress_bar_enabled() == before
    finally:
        (hf_logging.enable_progress_bar if shown else hf_logging.disable_progress_bar)()


def test_demo_refuses_a_non_empty_workdir(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["demo", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("workdir", "says"),
    [
        ("notes.txt", "--workdir {tmp}/notes.txt exists and is not a directory"),
        ("notes.txt/demo", "--workdir {tmp}/notes.txt/demo cannot be created: {tmp}/notes.txt is a file"),
        ("dangling", "--workdir {tmp}/dangling cannot be created: {tmp}/dangling is a link to {tmp}/nowhere"),
    ],
)
def test_a_workdir_no_directory_can_be_at_is_refused_before_it_trains(tmp_path, capsys, workdir, says):
    """The dangling link was a traceback from mkdir."""
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert main(["demo", "--workdir", str(tmp_path / workdir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ftprefix demo: error: {says.format(tmp=tmp_path)}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "notes.txt"]


@pytest.mark.skipif(os.geteuid() != 0, reason="as another user, /proc's permissions refuse it first")
def test_a_workdir_on_a_kernel_file_system_is_refused_before_it_trains(capsys):
    """mkdir answers ENOENT in /proc: it was a traceback, after the demo had begun."""
    assert main(["demo", "--workdir", "/proc/ftprefix-nowhere"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    says = "--workdir /proc/ftprefix-nowhere cannot be created: /proc takes no new files or directories"
    assert err.startswith(f"ftprefix demo: error: {says}"), err


@pytest.mark.parametrize(
    ("option", "says"),
    [
        (["--tp", "8"], "argument --tp: invalid choice: 8 (choose from 1, 2, 4)"),  # the model's 4 heads
        (["--steps", "0"], "--steps must be at least 1, got 0"),
    ],
)
def test_options_the_demo_cannot_run_with_are_refused_before_it_trains(tmp_path, capsys, option, says):
    """Both were refused, or trained nothing, only after the training they made useless."""
    workdir = tmp_path / "demo"
    try:
        code = main(["demo", "--workdir", str(workdir), *option])
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    assert code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(says)
    assert not workdir.exists()


@pytest.mark.parametrize(
    ("signum", "word"),
    [(signal.SIGTERM, "terminated"), (signal.SIGHUP, "hung up")],
    ids=["sigterm", "sighup"],
)
def test_a_demo_stopped_with_sigterm_or_sighup_removes_its_scratch_directory(tmp_path, signum, word):
    """SIGTERM (`timeout`, `kill`) and SIGHUP (the terminal or ssh session it ran in closed) end a
    command as Ctrl-C does: its clean-up runs. By their default action the demo died where it stood
    and left its scratch directory (the models it built) behind."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftprefix.cli", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        preexec_fn=signals_as_in_a_terminal,  # SIGHUP as a terminal sends it, even under nohup
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # training has begun: the scratch directory exists
        assert first.startswith("[1/5]") and [p.name[:14] for p in tmp_path.iterdir()] == ["ftprefix-demo-"]
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 128 + signum
        assert proc.stderr is not None and proc.stderr.read() == f"ftprefix demo: {word}\n"
        assert list(tmp_path.iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_temporary_directory_that_is_not_ascii_is_refused_before_training(tmp_path, capsys, monkeypatch):
    """serve refuses it (Triton's python backend cannot load a model from there); the demo met the
    refusal only at its fourth step, after training."""
    tmp = tmp_path / "一時"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ftprefix demo: error: the server's model repository would be under {tmp}")
    assert err.count("\n") == 1 and list(tmp.iterdir()) == []
