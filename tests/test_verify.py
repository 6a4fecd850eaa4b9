"""`ftprefix verify` on directories made by the real converter, and on deliberately broken copies."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from background import SCRATCH, Finished
from convert_support import ignores_peft_internal_warnings
from hf_reference import HFReference, logits_with_prefix

from ftprefix import cli, layout
from ftprefix.commands.options import prefix_sources
from ftprefix.demo import toy
from ftprefix.engine.model import Transformer
from ftprefix.verify import verify_files as verify

TP = 2
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """(converted dir, HF dir, --prefix values): one rinna prefix and one soft prompt task."""
    from ftprefix.converter import convert

    root = tmp_path_factory.mktemp("verify")
    hf = root / "hf"
    model = toy.build_model(hf, rotary_pct=0.25, seed=5, with_tokenizer=False)
    c = model.config
    rinna = root / "smile_prefix_encoder.seed1.best.checkpoint"
    torch.save(toy.random_prefix(5, c.num_hidden_layers, c.hidden_size, seed=2), rinna)
    soft = root / "soft.pt"
    torch.save(torch.randn(3, c.hidden_size, generator=torch.Generator().manual_seed(4)) * 0.5, soft)
    prefix_args = [f"{rinna},story={soft}"]
    convert(hf, prefix_sources(prefix_args), root / "ft", tp=TP, dtype="fp32")
    return root / "ft", hf, prefix_args


def broken_copy(converted, tmp_path: Path) -> tuple[Path, layout.ModelConfig]:
    ft, _, _ = converted
    shutil.copytree(ft, tmp_path / "ft")
    ft_dir = layout.find_ft_dir(tmp_path / "ft")
    return ft_dir, layout.read_config(ft_dir)


def results(directory: Path, hf: Path, prefix_args: list[str]) -> dict[str, bool]:
    return {row.task: row.ok for row in verify(directory, hf, prefix_sources(prefix_args)).rows}


def test_verify_passes_on_a_correct_conversion(converted, capsys) -> None:
    ft, hf, prefix_args = converted
    assert cli.main(["verify", str(ft), "--model", str(hf), "--prefix", prefix_args[0]]) == 0
    said = capsys.readouterr()
    out = said.out
    for name in ("(base model)", "smile", "story"):
        assert name in out
    assert "MISMATCH" not in out
    # on stderr, as it goes: a model of billions of parameters takes minutes on CPU
    assert [re.sub(r"\d+\.\d s", "T s", line) for line in said.err.splitlines()] == [
        "ftprefix verify: read the Hugging Face model in T s; its answers for 3 checks",
        "ftprefix verify: (base model): Hugging Face answered (1 of 3, T s)",
        "ftprefix verify: smile: Hugging Face answered (2 of 3, T s)",
        "ftprefix verify: story: Hugging Face answered (3 of 3, T s)",
        "ftprefix verify: read the converted model in T s; 3 checks",
        "ftprefix verify: (base model): checked (1 of 3, T s)",
        "ftprefix verify: smile: checked (2 of 3, T s)",
        "ftprefix verify: story: checked (3 of 3, T s)",
    ]


@pytest.mark.background(
    *(sys.executable, BENCHMARKS / "verify_memory.py", "--hidden", "512", "--layers", "8", "--vocab", "4096"),
    *("--workdir", SCRATCH),
)
def test_verify_never_holds_both_models_at_once(background_run: Finished) -> None:
    """Both in float32 at once, a 3.6 B model needed about 29 GB where either alone fits in 16.
    Here (a model of 56 MiB in float16), verify holding both peaked at 1.54x the larger model's
    memory with the newest transformers and 1.88x with the oldest, now at 1.08x and 1.30x (with
    transformers 4.40 the allocator keeps part of the released model's memory). Each model's is
    measured in a process of its own that reads it alone."""
    out = background_run.stdout
    assert background_run.returncode == 0, out[-2000:] + background_run.stderr[-2000:]
    ratio = re.search(r"verify above the imports / the larger model's: ([\d.]+)x", out)
    assert ratio is not None and 0.5 < float(ratio.group(1)) < 1.4, out


def test_hugging_faces_answers_decoded_with_its_cache_are_those_of_whole_rows(converted) -> None:
    """verify's reference decodes a token per forward pass with HF's KV cache; the tests' own
    reference runs the whole row again for every token: the same logits and tokens, FT's end
    (the row stops right after end_id) included."""
    from ftprefix.verify.reference import BASE, TaskReference, hf_answer, load_hf

    _, hf_dir, _ = converted
    prefix = toy.random_prefix(4, 2, 64, seed=11).numpy()
    reference = HFReference(hf_dir, {"task": prefix})
    model = load_hf(hf_dir, "fp32")
    cfg = layout.read_config(layout.find_ft_dir(converted[0]))
    ids = [7, 3, 99, 41, 5]
    for task, ref in ((None, BASE), ("task", TaskReference(prefix=prefix))):
        logits, tokens = hf_answer(model, ids, ref, cfg, 12)
        assert (
            np.abs(logits - logits_with_prefix(reference.model, ids, None if task is None else prefix)).max()
            < 1e-4
        )
        assert tokens == reference.greedy(ids, task, 12)[0]
        ended = tokens[4]  # as if it were the end token: the row stops right after it
        assert (
            hf_answer(model, ids, ref, cfg, 12, end_id=ended)[1] == reference.greedy(ids, task, 12, ended)[0]
        )


def test_a_model_memory_cannot_hold_in_float32_is_warned_of_before_it_is_read(converted) -> None:
    """Killed for lack of memory after minutes of reading a large model, verify said nothing of
    why. The need is Hugging Face's own count of the model's parameters, 4 bytes each."""
    from transformers import GPTNeoXForCausalLM

    from ftprefix.commands.verify import memory_note
    from ftprefix.console import human_bytes

    ft, hf_dir, _ = converted
    cfg = layout.read_config(layout.find_ft_dir(ft))
    needed = 4 * sum(p.numel() for p in GPTNeoXForCausalLM.from_pretrained(hf_dir).parameters())
    assert memory_note(cfg, needed * 101 // 100) is None and memory_note(cfg, None) is None
    note = memory_note(cfg, needed * 99 // 100)
    assert note is not None
    said = re.fullmatch(
        r"verify reads the model into float32, ([\d.]+) KiB, and (.+) of memory is available here: "
        r"it may be killed for lack of memory \(run it where more is free\)",
        note,
    )
    assert said is not None, note
    assert float(said.group(1)) * 1024 == pytest.approx(needed, rel=0.01)
    assert said.group(2) == human_bytes(needed * 99 // 100)


def test_tasks_without_their_checkpoint_are_listed_not_checked(converted) -> None:
    ft, hf, _ = converted
    rows = verify(ft, hf, []).rows
    assert [r.task for r in rows] == ["(base model)", "smile", "story"]
    assert rows[0].max_abs_diff is not None and rows[0].ok
    assert all(r.max_abs_diff is None and "not checked" in r.note for r in rows[1:])


def _mutate_prefix(ft_dir: Path, cfg: layout.ModelConfig, task: str, change) -> None:
    spec = next(t for t in cfg.tasks if t.name == task)
    for name in layout.prefix_file_names(task, cfg.tensor_para_size):
        path = ft_dir / name
        arr = layout.read_array(path, layout.prefix_rank_shape(cfg, spec.prompt_length), cfg.np_dtype)
        change(arr.copy()).astype(cfg.np_dtype).tofile(path)


def _rotate(keys: np.ndarray, rot: int) -> np.ndarray:
    """NeoX rotary at positions 0..P-1 on [..., P, head_dim] keys (what a wrong converter might do)."""
    p = keys.shape[-2]
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, rot, 2) / rot))
    freqs = np.arange(p)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(np.concatenate([freqs, freqs], -1)), np.sin(np.concatenate([freqs, freqs], -1))
    x = keys[..., :rot]
    rotated = np.concatenate([-x[..., rot // 2 :], x[..., : rot // 2]], -1)
    out = keys.copy()
    out[..., :rot] = x * cos + rotated * sin
    return out


def test_swapped_prefix_key_and_value_is_caught(converted, tmp_path: Path) -> None:
    ft_dir, cfg = broken_copy(converted, tmp_path)
    _mutate_prefix(ft_dir, cfg, "smile", lambda a: a[:, ::-1])  # [layers, 2, heads, P, hd]
    assert results(ft_dir, converted[1], converted[2]) == {
        "(base model)": True,
        "smile": False,
        "story": True,
    }


def test_rotated_prefix_key_is_caught(converted, tmp_path: Path) -> None:
    ft_dir, cfg = broken_copy(converted, tmp_path)

    def rotate_keys(a: np.ndarray) -> np.ndarray:
        a[:, 0] = _rotate(a[:, 0], cfg.rotary_embedding)
        return a

    _mutate_prefix(ft_dir, cfg, "smile", rotate_keys)
    assert results(ft_dir, converted[1], converted[2])["smile"] is False


def test_untransposed_qkv_is_caught(converted, tmp_path: Path, capsys) -> None:
    ft_dir, cfg = broken_copy(converted, tmp_path)
    spec = next(s for s in layout.layer_tensors(cfg, 0) if s.name.endswith("query_key_value.weight"))
    shape = spec.rank_shape(cfg.tensor_para_size)  # [hidden, 3, heads/tp, head_dim]
    for name in spec.file_names(cfg.tensor_para_size):
        arr = layout.read_array(ft_dir / name, shape, cfg.np_dtype)
        # HF's fused order (head, q/k/v) written where FT expects (q/k/v, head)
        np.ascontiguousarray(arr.transpose(0, 2, 1, 3)).tofile(ft_dir / name)
    assert cli.main(["verify", str(ft_dir), "--model", str(converted[1]), "--prefix", converted[2][0]]) == 1
    out = capsys.readouterr().out
    assert out.count("MISMATCH") >= 3  # base model and both tasks, then the summary


def test_tokens_at_positions_not_offset_by_the_prefix_is_caught(converted, monkeypatch) -> None:
    rotary = Transformer._rotary

    def from_zero(self: Transformer, positions: torch.Tensor) -> torch.Tensor:
        # an engine whose prompt pass starts each row's tokens at rotary position 0 instead of P
        return rotary(self, positions - positions[:, :1] if positions.shape[1] > 1 else positions)

    monkeypatch.setattr(Transformer, "_rotary", from_zero)
    assert results(*converted) == {"(base model)": True, "smile": False, "story": False}


def test_verify_rejects_an_unknown_task_in_one_line(converted, capsys) -> None:
    ft, hf, _ = converted
    assert cli.main(["verify", str(ft), "--model", str(hf), "--prefix", f"nope={hf / 'config.json'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ftprefix verify: error: unknown task 'nope'") and "\n" not in err
    # a checkpoint that is not there is named as such, not as a task named after the missing file
    missing = hf / "missing.pt"
    assert cli.main(["verify", str(ft), "--model", str(hf), "--prefix", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ftprefix verify: error: task missing: checkpoint {missing} does not exist"


def test_a_prefix_that_overflowed_is_reported_as_non_finite_logits(converted, tmp_path: Path, capsys) -> None:
    ft_dir, cfg = broken_copy(converted, tmp_path)
    _mutate_prefix(ft_dir, cfg, "smile", lambda a: a * np.inf)  # what an overflowing fp16 cast leaves
    assert cli.main(["verify", str(ft_dir), "--model", str(converted[1]), "--prefix", converted[2][0]]) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("smile"))
    assert "MISMATCH (non-finite logits" in row


# -- fp16: activations FT keeps in fp16 --------------------------------------------------------------


def _fp16_conversion(root: Path, mlp_scale: float) -> tuple[Path, Path]:
    """A toy model converted to fp16, its MLP weights scaled by `mlp_scale` (each weight stays far
    inside fp16's range; what they compute does not when the scale is large)."""
    hf = root / "hf"
    model = toy.build_model(hf, seed=3, with_tokenizer=False)
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            layer.mlp.dense_h_to_4h.weight.mul_(mlp_scale)
            layer.mlp.dense_4h_to_h.weight.mul_(mlp_scale)
    model.save_pretrained(hf)
    assert (
        cli.main(["convert", "--model", str(hf), "--tp", "1", "--dtype", "fp16", "--out", str(root / "ft")])
        == 0
    )
    return root / "ft", hf


def test_fp16_activation_check_passes_an_ordinary_model(tmp_path: Path, capsys) -> None:
    ft, hf = _fp16_conversion(tmp_path, 1.0)
    capsys.readouterr()
    assert cli.main(["verify", str(ft), "--model", str(hf)]) == 0
    said = capsys.readouterr()
    out = said.out
    assert "fp16 activations: layer" in out and "OVERFLOW" not in out and "inf/nan" not in out
    assert said.err.splitlines()[-1].startswith("ftprefix verify: fp16 activations: checked (2 of 2, ")
    assert [line for line in out.splitlines() if line != line.rstrip()] == []  # no trailing blanks


def test_fp16_activation_check_flags_a_model_that_overflows(tmp_path: Path, capsys) -> None:
    ft, hf = _fp16_conversion(tmp_path, 100.0)
    capsys.readouterr()
    assert cli.main(["verify", str(ft), "--model", str(hf)]) == 1
    out = capsys.readouterr().out
    assert "inf/nan" in out and "OVERFLOW" in out and "--dtype fp32" in out
    report = verify(ft, hf)
    assert report.fp16 is not None and report.fp16.non_finite and max(report.fp16.largest.values()) > 65504


@ignores_peft_internal_warnings
def test_verify_agrees_with_pefts_own_forward(tmp_path: Path, capsys) -> None:
    """A prefix-tuning adapter made and run by PEFT itself: what the converted files compute (the
    engine, FT's semantics) equals PEFT's own forward, and `ftprefix verify` says ok. This runs on
    both ends of the supported range (tests/test_supported_range.py runs this module on the oldest)."""
    from peft import PeftModel, PrefixTuningConfig, TaskType, get_peft_model

    from ftprefix.engine import Engine
    from ftprefix.hf_compat import load_gptneox

    hf = tmp_path / "hf"
    toy.build_model(hf, seed=8, with_tokenizer=False)
    config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
    peft_model = get_peft_model(load_gptneox(hf), config)
    with torch.no_grad():
        for _name, param in peft_model.named_parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)))
    peft_model.save_pretrained(str(tmp_path / "tenant"))
    ids = [5, 9, 2, 7, 11]
    with torch.no_grad():
        served = PeftModel.from_pretrained(load_gptneox(hf), str(tmp_path / "tenant")).eval()
        theirs = served(input_ids=torch.tensor([ids])).logits[0].numpy()
    tenant, ft = str(tmp_path / "tenant"), tmp_path / "ft"
    convert = ["convert", "--model", str(hf), "--prefix", tenant, "--out", str(ft), "--dtype", "fp32"]
    assert cli.main(convert) == 0
    ours = Engine.load(layout.ft_dir(ft, 1)).logits([ids], [0])[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    capsys.readouterr()
    argv = ["verify", str(ft), "--model", str(hf), "--prefix", tenant]
    assert cli.main(argv) == 0
    assert "tenant" in capsys.readouterr().out
