"""config.ini as FasterTransformer reads it, and task-name rules."""

from __future__ import annotations

import configparser
import os
import stat

import numpy as np
import pytest

from ftprefix import layout
from ftprefix.errors import UserError
from ftprefix.task_table import TaskTable


def _cfg(**kw: object) -> layout.ModelConfig:
    base = dict(
        model_name="toy",
        head_num=8,
        size_per_head=16,
        inter_size=512,
        num_layer=3,
        rotary_embedding=4,
        vocab_size=1000,
        start_id=0,
        end_id=2,
        use_gptj_residual=False,
        weight_data_type="fp16",
        tensor_para_size=2,
        tasks=TaskTable([("shout", 8), ("smile", 3)]),
    )
    base.update(kw)
    return layout.ModelConfig(**base)  # type: ignore[arg-type]


def test_config_ini_has_the_keys_ft_reads(tmp_path):
    layout.write_config(tmp_path, _cfg())
    # Read it the way FT's INIReader does: plain key = value pairs per section.
    ini = configparser.ConfigParser()
    ini.read(tmp_path / "config.ini")
    sec = ini["gptneox"]
    assert sec["head_num"] == "8" and sec["size_per_head"] == "16" and sec["inter_size"] == "512"
    assert sec["num_layer"] == "3" and sec["rotary_embedding"] == "4" and sec["vocab_size"] == "1000"
    assert sec["start_id"] == "0" and sec["end_id"] == "2"
    assert sec["use_gptj_residual"] == "0" and sec["weight_data_type"] == "fp16"
    assert sec["num_tasks"] == "2" and sec["prompt_learning_type"] == "2"
    assert ini["task_0"]["task_name"] == "shout" and ini["task_0"]["prompt_length"] == "8"
    assert ini["task_1"]["task_name"] == "smile" and ini["task_1"]["prompt_length"] == "3"
    assert layout.read_config(tmp_path) == _cfg()
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file behind


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_config_ini_gets_the_mode_any_new_file_gets(tmp_path, umask):
    """Triton may read a converted model as another user than the one who converted it (a
    container, OpenShift's arbitrary user ids): config.ini is as readable as an ordinary file, as
    the weights beside it are. Written from a private temporary file, it was 0o600 whatever the
    umask, and FT could not read it."""
    old = os.umask(umask)
    try:
        (tmp_path / "plain").write_bytes(b"")  # the reference: the mode open() gives a new file
        plain = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
        layout.write_config(tmp_path, _cfg())
        assert stat.S_IMODE((tmp_path / "config.ini").stat().st_mode) == plain
        (tmp_path / "config.ini").chmod(0o600)  # as an earlier version left it: a rewrite mends it
        layout.write_config(tmp_path, _cfg(tasks=()))
        assert stat.S_IMODE((tmp_path / "config.ini").stat().st_mode) == plain
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.ini", "plain"]


# config.ini edited by hand: each is one line naming what is wrong, and nothing changes
BROKEN_CONFIGS = {
    "a-key-missing": (lambda t: t.replace("head_num = 8\n", ""), "[gptneox] has no head_num"),
    "a-task-name-missing": (lambda t: t.replace("task_name = smile\n", ""), "[task_1] has no task_name"),
    "not-an-integer": (
        lambda t: t.replace("prompt_length = 8", "prompt_length = x"),
        "prompt_length = 'x' is not an",
    ),
    "a-task-section-missing": (
        lambda t: t.replace("[task_1]", "[task_5]"),
        "no [task_1] (num_tasks = 2: tasks 0 to 1)",
    ),
    "more-tasks-than-sections": (lambda t: t.replace("num_tasks = 2", "num_tasks = 3"), "it has no [task_2]"),
    "no-model-section": (lambda t: t.replace("[gptneox]", "[gpt]"), "it has no [gptneox]"),
    "empty": (lambda t: "", "it has no [gptneox]"),
    "a-line-of-neither": (
        lambda t: t + "\x00garbage\n",
        "is neither a [section] nor key = value: '\\x00garbage'",
    ),
    "a-key-before-any-section": (lambda t: "x = 1\n" + t, "line 1 comes before any [section]: 'x = 1'"),
    "a-section-twice": (lambda t: t + "[task_0]\n", "section 'task_0' already exists"),
    "a-task-twice": (lambda t: t.replace("task_name = smile", "task_name = shout"), "'shout' appears twice"),
}


@pytest.mark.parametrize("case", BROKEN_CONFIGS)
def test_a_config_ini_edited_by_hand_is_one_line_naming_what_is_wrong(tmp_path, capsys, case: str) -> None:
    from ftprefix import cli

    layout.write_config(tmp_path, _cfg())
    edit, message = BROKEN_CONFIGS[case]
    path = tmp_path / "config.ini"
    path.write_text(edit(path.read_text()))
    before = path.read_bytes()
    for argv in (
        ["tasks", "list", str(tmp_path)],
        ["serve", str(tmp_path), "--grpc-port", "0", "--http-port", "0"],
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is not a valid FasterTransformer GPT-NeoX config: " in err, err
        assert message in err, err
    assert path.read_bytes() == before


def test_a_config_ini_that_is_not_utf8_is_one_line_saying_so(tmp_path, capsys) -> None:
    from ftprefix import cli

    layout.write_config(tmp_path, _cfg())
    with open(tmp_path / "config.ini", "ab") as f:
        f.write(b"\xff\xfe\n")
    assert cli.main(["tasks", "list", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "it is not UTF-8 text" in err, err


def test_config_without_tasks_has_no_prompt_learning_keys(tmp_path):
    layout.write_config(tmp_path, _cfg(tasks=()))
    text = (tmp_path / "config.ini").read_text()
    assert "num_tasks" not in text and "prompt_learning_type" not in text and "task_0" not in text


@pytest.mark.parametrize("name", ["", "a b", "a/b", "a[b", "a]b", "a=b", "tab\t", "..", "ü", "newline\n"])
def test_task_names_ft_cannot_read_back_are_refused(name):
    with pytest.raises(UserError):
        layout.validate_task_name(name)


@pytest.mark.parametrize("name", ["shout", "task-1", "rinna.smileface", "A_9"])
def test_plain_task_names_are_accepted(name):
    layout.validate_task_name(name)


def test_prefix_permutation_matches_design_by_index():
    cfg = _cfg(tensor_para_size=2)
    p, heads, hd, layers = 5, cfg.head_num, cfg.size_per_head, cfg.num_layer
    prefix = np.random.default_rng(0).standard_normal((p, layers * 2 * heads * hd)).astype(np.float32)
    parts = layout.prefix_to_ft(prefix, cfg)
    assert [x.shape for x in parts] == [(layers, 2, heads // 2, p, hd)] * 2
    # element (layer l, kv, head h, token t, dim d) comes from prefix[t, ((l*2 + kv)*heads + h)*hd + d]
    for l_, kv, h, t, d in [(0, 0, 0, 0, 0), (2, 1, 7, 4, 15), (1, 0, 4, 2, 3), (1, 1, 3, 3, 9)]:
        rank, local = divmod(h, heads // 2)
        assert parts[rank][l_, kv, local, t, d] == prefix[t, ((l_ * 2 + kv) * heads + h) * hd + d]
    back = layout.prefix_from_ft(parts)
    np.testing.assert_array_equal(back.reshape(p, -1), prefix)


def test_read_array_rejects_wrong_size(tmp_path):
    np.zeros(7, dtype=np.float32).tofile(tmp_path / "x.bin")
    with pytest.raises(UserError, match="28 bytes, expected 32"):
        layout.read_array(tmp_path / "x.bin", (8,), np.dtype("<f4"))
