"""Bad input: one clear error line, exit code 2, and nothing written or changed."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from convert_support import tree_digest

from ftprefix.cli import main
from ftprefix.converter import convert
from ftprefix.converter.checkpoints import PrefixSource
from ftprefix.converter.output_dir import staged_ft_dir
from ftprefix.demo.toy import build_model, random_prefix
from ftprefix.errors import UserError

LAYERS, HIDDEN, HEADS = 2, 32, 4


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hf") / "base"
    build_model(
        d, hidden_size=HIDDEN, num_heads=HEADS, num_layers=LAYERS, vocab_size=64, with_tokenizer=False
    )
    return d


@pytest.fixture
def work(tmp_path: Path, base: Path) -> Path:
    """A scratch directory holding a good prefix checkpoint `good.pt` and a copy of the base model."""
    torch.save(random_prefix(3, LAYERS, HIDDEN), tmp_path / "good.pt")
    shutil.copytree(base, tmp_path / "model")
    return tmp_path


def _edit_config(model: Path, **changes: object) -> None:
    cfg = json.loads((model / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (model / "config.json").write_text(json.dumps(cfg))


def _fails(argv: list[str], work: Path, capsys: pytest.CaptureFixture[str]) -> str:
    before = tree_digest(work)
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    errors = [line for line in err if ": error: " in line]
    assert len(errors) == 1 and errors[0] == err[-1]
    assert tree_digest(work) == before  # nothing written, nothing changed
    return errors[0]


def _convert_argv(work: Path, *prefixes: str, tp: int = 2) -> list[str]:
    argv = [
        "convert",
        "--model",
        str(work / "model"),
        "--tp",
        str(tp),
        "--dtype",
        "fp16",
        "--out",
        str(work / "out"),
    ]
    for p in prefixes:
        argv += ["--prefix", p]
    return argv


def _without_tensor(work: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = work / "model/model.safetensors"
    state = load_file(str(path))
    del state["gpt_neox.layers.1.mlp.dense_4h_to_h.weight"]
    save_file(state, str(path))


def _scale_tensor(work: Path, name: str, factor: float) -> None:
    """Multiply one stored base weight in place (e.g. by nan or by a huge number)."""
    from safetensors.torch import load_file, save_file

    path = work / "model/model.safetensors"
    state = load_file(str(path))
    state[name] = state[name] * factor
    save_file(state, str(path))


def _peft_dir(work: Path, **config: object) -> str:
    from safetensors.torch import save_file

    d = work / "adapter"
    d.mkdir()
    cfg = {
        "peft_type": "PREFIX_TUNING",
        "num_virtual_tokens": 3,
        "num_layers": LAYERS,
        "token_dim": HIDDEN,
        "num_attention_heads": HEADS,
        "num_transformer_submodules": 1,
    }
    cfg.update(config)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    save_file({"prompt_embeddings": random_prefix(3, LAYERS, HIDDEN)}, str(d / "adapter_model.safetensors"))
    return str(d)


def _text(work: Path, name: str, text: str) -> str:
    (work / name).write_text(text)
    return str(work / name)


def _save(work: Path, name: str, obj: object) -> str:
    torch.save(obj, work / name)
    return str(work / name)


CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "not gpt-neox": (
        lambda w: (_edit_config(w / "model", model_type="llama"), _convert_argv(w))[1],
        "not a GPT-NeoX model (model_type is 'llama', expected 'gpt_neox')",
    ),
    "not a GELU": (
        lambda w: (_edit_config(w / "model", hidden_act="relu"), _convert_argv(w))[1],
        "hidden_act 'relu' is not a GELU",
    ),
    "a flag that is not a boolean": (
        lambda w: (_edit_config(w / "model", attention_bias="false"), _convert_argv(w))[1],
        "attention_bias must be true or false, got 'false'",
    ),
    "rope theta": (
        lambda w: (
            _edit_config(
                w / "model",
                rope_parameters={"rope_type": "default", "rope_theta": 500000, "partial_rotary_factor": 0.25},
            ),
            _convert_argv(w),
        )[1],
        "rope_theta is 500000; FasterTransformer hard-codes the rotary base 10000",
    ),
    "rope scaling": (
        lambda w: (
            _edit_config(
                w / "model", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000}
            ),
            _convert_argv(w),
        )[1],
        "rope scaling 'linear' is not supported",
    ),
    "old-style rotary base": (
        lambda w: (
            _edit_config(w / "model", rope_parameters=None, rotary_pct=0.25, rotary_emb_base=20000),
            _convert_argv(w),
        )[1],
        "rope_theta is 20000",
    ),
    "old-style rope scaling": (
        lambda w: (
            _edit_config(
                w / "model",
                rope_parameters=None,
                rotary_pct=0.25,
                rope_scaling={"type": "dynamic", "factor": 2.0},
            ),
            _convert_argv(w),
        )[1],
        "rope scaling 'dynamic' is not supported",
    ),
    "missing weight": (
        lambda w: (_without_tensor(w), _convert_argv(w))[1],
        "missing weight gpt_neox.layers.1.mlp.dense_4h_to_h.weight",
    ),
    "heads vs tp": (
        lambda w: _convert_argv(w, tp=8),
        "the model's 4 attention heads do not divide by --tp 8",
    ),
    "output exists": (
        lambda w: (main(_convert_argv(w, str(w / "good.pt"))), _convert_argv(w, str(w / "good.pt")))[1],
        "already holds a conversion; pass --force to replace it",
    ),
    "foreign file in out": (
        lambda w: ((w / "out").mkdir(), (w / "out/notes.txt").write_text("mine"), _convert_argv(w))[2],
        "holds notes.txt, which is not an ftprefix conversion",
    ),
    "foreign file in out, --force": (
        lambda w: (
            (w / "out").mkdir(),
            (w / "out/notes.txt").write_text("mine"),
            [*_convert_argv(w), "--force"],
        )[2],
        "holds notes.txt, which is not an ftprefix conversion",
    ),
    "foreign file in the conversion, --force": (
        lambda w: (
            main(_convert_argv(w, str(w / "good.pt"))),
            (w / "out/2-gpu/notes.txt").write_text("mine"),
            [*_convert_argv(w, str(w / "good.pt")), "--force"],
        )[2],
        "holds notes.txt, which ftprefix did not write",
    ),
    "inf in a prefix": (
        lambda w: _convert_argv(w, "hot=" + _save(w, "hot.pt", random_prefix(3, LAYERS, HIDDEN) / 0.0)),
        "task hot",
    ),
    "prefix beyond fp16": (
        lambda w: _convert_argv(w, "big=" + _save(w, "big.pt", random_prefix(3, LAYERS, HIDDEN) * 1e6)),
        "beyond fp16's 65504: convert with --dtype fp32",
    ),
    "nan in a base weight": (
        lambda w: (
            _scale_tensor(w, "gpt_neox.layers.1.mlp.dense_4h_to_h.weight", float("nan")),
            _convert_argv(w),
        )[1],
        "base weight gpt_neox.layers.1.mlp.dense_4h_to_h.weight holds inf or nan",
    ),
    "base weight beyond fp16": (
        lambda w: (_scale_tensor(w, "gpt_neox.embed_in.weight", 1e7), _convert_argv(w))[1],
        "base weight gpt_neox.embed_in.weight holds values up to",
    ),
    "task name too long for FT": (
        lambda w: _convert_argv(w, "x" * 187 + "=" + str(w / "good.pt")),
        "task names can have at most 186",
    ),
    "prefix layers": (
        lambda w: _convert_argv(w, "deep=" + _save(w, "deep.pt", random_prefix(3, 3, HIDDEN))),
        "task deep: prefix shape [3, 192] does not match the base model: expected [P, 128] = "
        "[P, layers 2 x 2 x heads 4 x head_dim 8]; it looks like 3 layers",
    ),
    "prefix hidden": (
        lambda w: _convert_argv(w, "wide=" + _save(w, "wide.pt", random_prefix(3, LAYERS, 48))),
        "task wide: prefix shape [3, 192] does not match the base model: expected [P, 128]",
    ),
    "adapter heads": (
        lambda w: _convert_argv(w, _peft_dir(w, num_attention_heads=8)),
        "task adapter: adapter was trained for another model: num_attention_heads 8 (base: 4)",
    ),
    "whole tokens": (
        lambda w: _convert_argv(w, "odd=" + _save(w, "odd.pt", torch.randn(200))),
        "task odd: 200 values do not divide into whole tokens of 128",
    ),
    "duplicate names": (
        lambda w: _convert_argv(w, f"a={w / 'good.pt'}", f"b={w / 'good.pt'},a={w / 'good.pt'}"),
        "duplicate task name 'a' (given twice)",
    ),
    "name with whitespace": (
        lambda w: _convert_argv(w, f"my task={w / 'good.pt'}"),
        "task name 'my task' cannot be read back by FasterTransformer",
    ),
    "name with slash": (
        lambda w: _convert_argv(w, f"a/b={w / 'good.pt'}"),
        "task name 'a/b' cannot be read back by FasterTransformer",
    ),
    "name with brackets": (
        lambda w: _convert_argv(w, f"[x]={w / 'good.pt'}"),
        "task name '[x]' cannot be read back by FasterTransformer",
    ),
    "empty name": (
        lambda w: _convert_argv(w, f"={w / 'good.pt'}"),
        "empty task name",
    ),
    "missing checkpoint": (
        lambda w: _convert_argv(w, str(w / "nope.pt")),
        "task nope: checkpoint",
    ),
    # named after its file, a mistyped path's task would be taken for a duplicate of the right one
    "missing checkpoint sharing a task's name": (
        lambda w: _convert_argv(w, str(w / "good.pt"), str(w / "typo" / "good.pt")),
        f"{Path('typo') / 'good.pt'} does not exist",
    ),
    # not reported as a pickle that --trust-pickle would open
    "a JSON file given as a checkpoint": (
        lambda w: _convert_argv(w, _text(w, "adapter_config.json", '{"peft_type": "PREFIX_TUNING"}')),
        "adapter_config.json is not a torch file (torch.save writes a zip archive or a pickle; "
        "this file starts with b'{\"pe'",
    ),
    "an empty checkpoint": (
        lambda w: _convert_argv(w, _text(w, "empty.pt", "")),
        "empty.pt is not a torch file (torch.save writes a zip archive or a pickle; this file is empty)",
    ),
    "pickle needing code": (
        lambda w: _convert_argv(
            w,
            _save(
                w,
                "meta.pt",
                {"prompt_embeddings": random_prefix(3, LAYERS, HIDDEN), "args": argparse.Namespace(lr=0.1)},
            ),
        ),
        "needs code execution to load",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_nothing_written(case, work, capsys):
    make_argv, message = CASES[case]
    line = _fails(make_argv(work), work, capsys)
    assert line.startswith("ftprefix convert: error: ")
    assert message in line
    if case == "pickle needing code":
        assert "--trust-pickle" in line


def test_name_with_equals_sign_is_refused(work):
    with pytest.raises(UserError, match="task name 'a=b' cannot be read back"):
        convert(work / "model", [PrefixSource("a=b", work / "good.pt")], work / "out", tp=1, dtype="fp16")
    assert not (work / "out").exists()


def test_trust_pickle_opts_in(work, capsys):
    path = _save(
        work,
        "meta.pt",
        {"prompt_embeddings": random_prefix(3, LAYERS, HIDDEN), "args": argparse.Namespace(lr=0.1)},
    )
    assert main([*_convert_argv(work, path), "--trust-pickle"]) == 0
    assert (work / "out/2-gpu/model.prefix_prompt.meta.weight.1.bin").is_file()


def test_failed_force_keeps_the_previous_output(work, capsys):
    assert main(_convert_argv(work, str(work / "good.pt"))) == 0
    _fails([*_convert_argv(work, str(work / "nope.pt")), "--force"], work, capsys)


def test_failure_midway_leaves_no_complete_looking_directory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError), staged_ft_dir(out, 1) as staging:
        (staging / "config.ini").write_text("[gptneox]\n")
        raise RuntimeError("disk full")
    assert list(out.iterdir()) == []


def _cli_in_child(
    argv: list[str], preexec_fn: Callable[[], None], timeout: float
) -> subprocess.CompletedProcess[str]:
    """`ftprefix ARGV` in a child process set up by `preexec_fn` (its limits, its permissions)."""
    return subprocess.run(
        [sys.executable, "-m", "ftprefix.cli", *argv],
        capture_output=True,
        text=True,
        preexec_fn=preexec_fn,
        timeout=timeout,
        check=False,
    )


def _small_files_only() -> None:
    """In the child: files may not grow past 1 KiB, and writing past that fails (EFBIG) instead of
    killing the process (SIGXFSZ), as a full disk fails a write (ENOSPC)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


def test_a_disk_that_refuses_the_writes_is_one_line_exit_1_nothing_left(work):
    """What the machine's storage refuses (full, over quota, a file too large) is the user's to fix:
    one line naming the file and what to do, no traceback, and no half-written conversion."""
    done = _cli_in_child(_convert_argv(work, str(work / "good.pt")), _small_files_only, timeout=300)
    assert done.returncode == 1, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "error" in line]
    assert line.startswith("ftprefix convert: error: File too large (") and "Traceback" not in done.stderr
    assert line.endswith("free some space, or write somewhere else, and run it again")
    assert not (work / "out").exists() or list((work / "out").iterdir()) == []


def test_an_output_path_no_directory_can_be_at_is_one_line_exit_2(work, capsys):
    """A file where a parent of --out should be, or a name longer than the file system takes:
    the user's path to give again, in one line; they were tracebacks from mkdir."""
    (work / "notes.txt").write_text("mine")
    dangling = work / "dangling"
    dangling.symlink_to(work / "nowhere")  # mkdir fails on it: it was a traceback
    for out, says in (
        (work / "notes.txt" / "out", f"--out {work / 'notes.txt' / 'out'} cannot be created: "),
        (work / ("x" * 300) / "out", "File name too long ("),
        (dangling, f"--out {dangling} cannot be created: {dangling} is a link to {work / 'nowhere'}"),
        (dangling / "out", f"--out {dangling / 'out'} cannot be created: {dangling} is a link to "),
    ):
        argv = _convert_argv(work)
        argv[argv.index("--out") + 1] = str(out)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"ftprefix convert: error: {says}"), err
        deploy = ["triton-repo", str(work / "model"), "--out", str(out)]
        assert main(deploy) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"ftprefix triton-repo: error: {says}"), err
    assert sorted(p.name for p in work.iterdir()) == ["dangling", "good.pt", "model", "notes.txt"]
    assert (work / "notes.txt").read_text() == "mine"
    assert os.readlink(work / "dangling") == str(work / "nowhere")


@pytest.mark.parametrize(
    ("parent", "refusal"), [("/proc", "No such file or directory"), ("/sys", "Operation not permitted")]
)
def test_an_output_on_a_kernel_file_system_is_one_line_exit_2(work, capsys, parent, refusal):
    """/proc and /sys take no new directories (mkdir answers ENOENT and EPERM there): both were
    tracebacks, the first one reading as a bug's. As another user than root, the directory's
    permissions refuse it first, as for any directory that user may not write."""
    out = Path(parent) / "ftprefix-nowhere" / "out"
    refusal = f"{parent} takes no new files or directories ({refusal}),"
    if os.geteuid() == 0:
        code, says = 2, f"--out {out} cannot be created: {refusal}"
    else:
        code, says = 1, "Permission denied ("
    convert = _convert_argv(work)
    convert[convert.index("--out") + 1] = str(out)
    deploy = ["triton-repo", str(work / "model"), "--out", str(out)]
    for command, args in (("convert", convert), ("triton-repo", deploy)):
        assert main(args) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"ftprefix {command}: error: {says}"), err
    assert not out.parent.exists()


def test_an_output_that_holds_an_input_is_refused_however_the_input_is_reached(work, capsys):
    """--out may not contain the model or a checkpoint (a --force conversion would replace them):
    named directly, through a link to a directory inside --out, or as a link to a file there. A
    directory beside --out whose name only begins with --out's is not inside it."""
    out = work / "out"
    (out / "2-gpu").mkdir(parents=True)  # a conversion's: --out is ours to write
    torch.save(random_prefix(3, LAYERS, HIDDEN, seed=4), out / "2-gpu" / "inside.pt")
    (work / "via").symlink_to(out / "2-gpu")
    (work / "linked.pt").symlink_to(out / "2-gpu" / "inside.pt")
    for prefix in (out / "2-gpu" / "inside.pt", work / "via" / "inside.pt", work / "linked.pt"):
        line = _fails([*_convert_argv(work, str(prefix)), "--force"], work, capsys)
        says = f"--out {out} contains the input {prefix}; choose another output directory"
        assert line == f"ftprefix convert: error: {says}"
    model_inside = _convert_argv(work, str(work / "good.pt"))
    model_inside[model_inside.index("--out") + 1] = str(work)
    assert f"--out {work} contains the input {work / 'model'};" in _fails(model_inside, work, capsys)
    shutil.rmtree(out)
    (work / "out2").mkdir()
    shutil.copy(work / "good.pt", work / "out2" / "good.pt")
    assert main(_convert_argv(work, str(work / "out2" / "good.pt"))) == 0
    assert (out / "2-gpu" / "config.ini").is_file()


def _without_permission_override() -> None:
    """In the child: file permissions hold even for root, who reads anything otherwise. The
    capabilities that let it, CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2), leave the bounding
    set (prctl PR_CAPBSET_DROP), so that the exec that follows, which gives root every capability
    of that set, gives it neither; a user other than root has neither anyway."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_model_this_user_may_not_read_is_one_line_exit_1(work):
    """A converted model another user wrote without read permission for this one (config.ini
    written private to its owner, as an earlier version did): one line naming the file and what
    to do about it, not a traceback and not advice about writing."""
    assert main(_convert_argv(work)) == 0
    config = work / "out/2-gpu/config.ini"
    config.chmod(0)
    done = _cli_in_child(["tasks", "list", str(work / "out")], _without_permission_override, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"ftprefix tasks: error: Permission denied ({config}): run as a user who may read and write it, "
        "or give this one the permissions (a converted model must be readable by whoever serves it)"
    ]


def test_model_differences_ft_ignores_are_warned_not_refused(work, capsys):
    _edit_config(work / "model", layer_norm_eps=1e-6, hidden_act="gelu_new")
    assert main(_convert_argv(work)) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "ftprefix convert: warning: the model's layer_norm_eps is 1e-06; FasterTransformer computes "
        "GPT-NeoX LayerNorm with eps 1e-05"
    ]
    assert np.fromfile(work / "out/2-gpu/model.wte.bin", dtype=np.float16).size == 64 * HIDDEN
