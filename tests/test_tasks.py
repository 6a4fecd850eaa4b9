"""`ftprefix tasks list|add|remove`: the task table changes, the base weights never do."""

from __future__ import annotations

import configparser
from pathlib import Path

import numpy as np
import pytest
import torch
from convert_support import hf_json, read_prefix_files, tree_digest

from ftprefix.cli import main
from ftprefix.demo.toy import build_model, random_prefix

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

    assert main(["tasks", "remove", str(converted), "first"]) == 0
    msg = capsys.readouterr().out
    assert "removed task first" in msg
    assert "task ids moved down: second 1->0, soft 2->1" in msg
    assert _task_table(converted) == [("second", "4"), ("soft", "2")]
    assert not list((converted / "2-gpu").glob("model.prefix_prompt.first.*"))

    assert main(["tasks", "remove", str(converted), "second", "soft"]) == 0
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
        (["remove", "{out}", "nope"], "unknown task 'nope'; known tasks: first"),
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
