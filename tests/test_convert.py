"""`ftprefix convert`: every file's bytes against DESIGN.md's rules, for both residual styles."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from convert_support import (
    expected_base_files,
    hf_json,
    hf_state,
    read_prefix_files,
    recombine_to_hf,
    tree_digest,
)

from ftprefix.cli import main
from ftprefix.converter import convert
from ftprefix.converter.checkpoints import PrefixSource
from ftprefix.demo.toy import build_model, random_prefix

STYLES = {
    # parallel residual with partial rotary and exact erf GELU (which FT does not compute: convert
    # warns); sequential residual with full rotary
    "parallel": dict(use_parallel_residual=True, rotary_pct=0.25, seed=1, hidden_act="gelu"),
    "sequential": dict(use_parallel_residual=False, rotary_pct=1.0, seed=2),
}


@pytest.fixture(scope="session")
def toy_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    dirs = {}
    for style, kw in STYLES.items():
        d = root / style
        build_model(
            d,
            hidden_size=32,
            num_heads=4,
            num_layers=2,
            intermediate_size=96,
            vocab_size=64,
            with_tokenizer=False,
            **kw,
        )
        dirs[style] = d
    return dirs


@pytest.fixture(scope="session")
def rinna_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "smile_prefix_encoder.seed42.2024.best.checkpoint"
    torch.save(random_prefix(3, 2, 32, seed=7), path)
    return path


@pytest.mark.parametrize("style", sorted(STYLES))
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("tp", [1, 2])
def test_every_file_matches_the_design_rules(toy_models, rinna_file, tmp_path, style, dtype, tp):
    hf_dir = toy_models[style]
    cfg, sd = hf_json(hf_dir), hf_state(hf_dir)
    out = tmp_path / "out"
    convert(
        hf_dir,
        [PrefixSource("smile", rinna_file)],
        out,
        tp=tp,
        dtype=dtype,
        progress=False,
        warn=lambda _m: None,
    )
    ft_dir = out / f"{tp}-gpu"

    expected = expected_base_files(sd, cfg, tp, dtype)
    written = {p.name: p.read_bytes() for p in ft_dir.iterdir()}
    prefix_files = {f"model.prefix_prompt.smile.weight.{r}.bin" for r in range(tp)}
    assert set(written) == set(expected) | prefix_files | {"config.ini"}
    for name, data in expected.items():
        assert written[name] == data, name

    # and the rank files recombine into the HF tensors
    back = recombine_to_hf(ft_dir, cfg, tp, dtype)
    tol = 0 if dtype == "fp32" else 2e-3
    for name, tensor in back.items():
        np.testing.assert_allclose(tensor, sd[name], rtol=tol, atol=tol, err_msg=name)

    prefix = torch.load(rinna_file).numpy().reshape(3, 2, 2, 4, 8)
    got = read_prefix_files(ft_dir, "smile", cfg, tp, dtype, 3)
    np.testing.assert_allclose(got, prefix, rtol=tol, atol=tol)

    ini = configparser.ConfigParser()
    ini.read(ft_dir / "config.ini")
    sec = ini["gptneox"]
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    rotary = int(head_dim * STYLES[style]["rotary_pct"])
    assert dict(sec) == {
        "model_name": style,
        "head_num": "4",
        "size_per_head": str(head_dim),
        "inter_size": "96",
        "num_layer": "2",
        "rotary_embedding": str(rotary),
        "vocab_size": "64",
        "start_id": str(cfg["bos_token_id"]),
        "end_id": str(cfg["eos_token_id"]),
        "use_gptj_residual": str(int(STYLES[style]["use_parallel_residual"])),
        "weight_data_type": dtype,
        "tensor_para_size": str(tp),
        "num_tasks": "1",
        "prompt_learning_type": "2",
    }
    assert dict(ini["task_0"]) == {"task_name": "smile", "prompt_length": "3"}


def _write_torch_bins(src: Path, dst: Path, shards: int) -> None:
    """The same weights as `pytorch_model.bin` (or sharded with an index), as older transformers saved."""
    from safetensors.torch import load_file

    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()
    state = load_file(str(src / "model.safetensors"))
    if shards == 1:
        torch.save(state, dst / "pytorch_model.bin")
        return
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        shard = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[i::shards]}
        torch.save(part, dst / shard)
        weight_map.update(dict.fromkeys(part, shard))
    (dst / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _other_style_config(src: Path, dst: Path) -> None:
    """The same model described in the other rotary style than the installed transformers writes:
    the older rotary_pct / rotary_emb_base keys, or the newer rope_parameters."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    if "rope_parameters" in cfg:
        rope = cfg.pop("rope_parameters")
        cfg["rotary_pct"] = rope["partial_rotary_factor"]
        cfg["rotary_emb_base"] = rope["rope_theta"]
        cfg["rope_scaling"] = None
    else:
        cfg["rope_parameters"] = {
            "rope_type": "default",
            "partial_rotary_factor": cfg.pop("rotary_pct"),
            "rope_theta": cfg.pop("rotary_emb_base"),
        }
        cfg.pop("rope_scaling", None)
    (dst / "config.json").write_text(json.dumps(cfg))


def test_every_source_format_gives_the_same_files(toy_models, tmp_path):
    src = toy_models["parallel"]
    variants = {"safetensors": src}
    sharded = tmp_path / "sharded"
    model = build_model(
        None,
        hidden_size=32,
        num_heads=4,
        num_layers=2,
        intermediate_size=96,
        vocab_size=64,
        with_tokenizer=False,
        **STYLES["parallel"],
    )
    model.save_pretrained(str(sharded), max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    variants["sharded"] = sharded
    _write_torch_bins(src, tmp_path / "bin", shards=1)
    _write_torch_bins(src, tmp_path / "bins", shards=3)
    _other_style_config(src, tmp_path / "other")
    variants.update(bin=tmp_path / "bin", bins=tmp_path / "bins", other=tmp_path / "other")

    digests = {}
    for name, hf_dir in variants.items():
        out = tmp_path / f"out-{name}"
        convert(hf_dir, [], out, tp=2, dtype="fp16", progress=False, warn=lambda _m: None)
        digest = tree_digest(out)
        digest.pop("2-gpu/config.ini")  # model_name is the directory name
        digests[name] = digest
    for name, digest in digests.items():
        assert digest == digests["safetensors"], name


def test_bf16_weights_are_widened_exactly(toy_models, tmp_path):
    from safetensors.torch import load_file, save_file

    src = toy_models["sequential"]
    bf16 = tmp_path / "bf16"
    shutil.copytree(src, bf16)
    state = {k: v.to(torch.bfloat16) for k, v in load_file(str(src / "model.safetensors")).items()}
    save_file(state, str(bf16 / "model.safetensors"))
    convert(bf16, [], tmp_path / "out", tp=1, dtype="fp32", progress=False, warn=lambda _m: None)
    wte = np.fromfile(tmp_path / "out/1-gpu/model.wte.bin", dtype=np.float32)
    np.testing.assert_array_equal(wte, state["gpt_neox.embed_in.weight"].float().numpy().ravel())


def test_cli_prints_summary_and_warnings(toy_models, rinna_file, tmp_path, capsys):
    hf_dir = toy_models["parallel"]
    out = tmp_path / "out"
    rc = main(
        [
            "convert",
            "--model",
            str(hf_dir),
            "--prefix",
            str(rinna_file),
            "--prefix",
            f"again={rinna_file}",
            "--tp",
            "2",
            "--dtype",
            "fp16",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    lines = captured.out.splitlines()
    assert lines[0].split() == ["id", "task", "from", "prefix", "length", "bytes", "written"]
    assert lines[2].split()[:4] == ["0", "smile", "prefix", "3"]
    assert lines[3].split()[:4] == ["1", "again", "prefix", "3"]
    assert "(tp 2, fp16)" in lines[-1]
    # toy models use exact-erf GELU; FT computes the tanh form: one warning line, no progress bar
    assert captured.err.strip().splitlines() == [
        "ftprefix convert: warning: the model's hidden_act is 'gelu' (exact erf GELU); "
        "FasterTransformer computes GELU in its tanh form"
    ]
    assert (out / "2-gpu/config.ini").is_file()


def _quiet_convert(hf_dir: Path, out: Path, tp: int, dtype: str, **kw) -> None:
    convert(hf_dir, [], out, tp=tp, dtype=dtype, progress=False, warn=lambda _m: None, **kw)


def test_force_replaces_only_the_earlier_conversion_for_that_tp(toy_models, tmp_path):
    out = tmp_path / "out"
    _quiet_convert(toy_models["parallel"], out, 1, "fp32")
    _quiet_convert(toy_models["parallel"], out, 2, "fp32")  # beside it: one conversion per tp
    keep = tree_digest(out / "2-gpu")
    _quiet_convert(toy_models["sequential"], out, 1, "fp16", force=True)
    assert "weight_data_type = fp16" in (out / "1-gpu/config.ini").read_text()
    assert tree_digest(out / "2-gpu") == keep
    assert sorted(p.name for p in out.iterdir()) == ["1-gpu", "2-gpu"]  # no staging, old copy or lock left


def test_every_file_written_is_as_readable_as_an_ordinary_file(toy_models, rinna_file, tmp_path):
    """The converted model is read by Triton, in a container that may run as another user: every
    file and directory gets the mode an ordinary one gets under the umask (config.ini, written
    from a private temporary file, was 0o600), after convert and after `tasks add` alike."""
    old = os.umask(0o027)
    try:
        (tmp_path / "plain").write_bytes(b"")
        (tmp_path / "plain-dir").mkdir()
        file_mode = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
        dir_mode = stat.S_IMODE((tmp_path / "plain-dir").stat().st_mode)
        out = tmp_path / "out"
        _quiet_convert(toy_models["parallel"], out, 2, "fp16")
        assert main(["tasks", "add", str(out), "--prefix", f"smile={rinna_file}"]) == 0
    finally:
        os.umask(old)
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert "2-gpu/config.ini" in modes and "2-gpu/model.prefix_prompt.smile.weight.0.bin" in modes
    wrong = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (dir_mode if (out / name).is_dir() else file_mode)
    }
    assert wrong == {}


def test_force_never_deletes_what_ftprefix_did_not_write(toy_models, tmp_path, capsys):
    out = tmp_path / "out"
    _quiet_convert(toy_models["parallel"], out, 1, "fp32")
    (out / "notes.txt").write_text("mine")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/data.bin").write_text("mine too")
    (out / "1-gpu/model.wte.bin").unlink()
    (out / "1-gpu/model.wte.bin").symlink_to(tmp_path / "elsewhere/data.bin")
    before = tree_digest(tmp_path)
    argv = ["convert", "--model", str(toy_models["parallel"]), "--tp", "1", "--out", str(out), "--force"]
    assert main(argv) == 2
    assert "holds notes.txt, which is not an ftprefix conversion" in capsys.readouterr().err
    (out / "notes.txt").unlink()
    before = tree_digest(tmp_path)
    assert main(argv) == 2  # the conversion itself holds a symlink out of it: not followed, refused
    assert "holds model.wte.bin, which ftprefix did not write" in capsys.readouterr().err
    assert tree_digest(tmp_path) == before and (tmp_path / "elsewhere/data.bin").read_text() == "mine too"


def test_a_killed_conversion_is_cleaned_up_by_the_next(toy_models, tmp_path, capsys):
    out = tmp_path / "out"
    _quiet_convert(toy_models["parallel"], out, 1, "fp32")
    _quiet_convert(toy_models["parallel"], out, 2, "fp32")
    # what SIGKILL leaves: a half-written staging directory, and a replaced conversion set aside
    (out / ".1-gpu.tmp-abc123").mkdir()
    (out / ".1-gpu.tmp-abc123/model.wte.bin").write_bytes(b"half")
    (out / "2-gpu").rename(out / ".2-gpu.old-def456")
    messages: list[str] = []
    convert(
        toy_models["parallel"], [], out, tp=1, dtype="fp32", force=True, progress=False, warn=messages.append
    )
    assert sorted(p.name for p in out.iterdir()) == ["1-gpu", "2-gpu"]  # tp 2 restored, staging removed
    assert any(".1-gpu.tmp-abc123" in m for m in messages) and any("restored" in m for m in messages)
