"""The reference engine against Hugging Face GPTNeoXForCausalLM with the prefix as past_key_values.

FT directories here are made with `ftprefix convert`, as a user makes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_reference import logits_with_prefix
from transformers.activations import ACT2FN

from ftprefix import layout
from ftprefix.cli import main
from ftprefix.demo import toy
from ftprefix.engine import Engine, GenerationRequest

TASKS = (("alpha", 3), ("beta", 6), ("gamma", 9))


@dataclass
class Built:
    model: object  # fp32 HF GPTNeoXForCausalLM, weights as the files hold them
    cfg: layout.ModelConfig
    directory: Path
    prefixes: list[np.ndarray]  # canonical [P, layers*2*hidden] per task id


def build(
    directory: Path,
    tp: int,
    parallel: bool,
    rotary_pct: float,
    dtype: str = "fp32",
    attention_bias: bool = True,
) -> Built:
    """A toy HF model and one prefix per task, converted with `ftprefix convert`."""
    hf_dir = directory / "hf"
    model = toy.build_model(
        hf_dir,
        use_parallel_residual=parallel,
        attention_bias=attention_bias,
        rotary_pct=rotary_pct,
        seed=tp,
        with_tokenizer=False,
        hidden_act="gelu",  # exact erf GELU: the engine's gelu="erf" path is checked against it
    )
    c = model.config
    prefixes = [
        toy.random_prefix(p, c.num_hidden_layers, c.hidden_size, seed=10 + i).numpy()
        for i, (_, p) in enumerate(TASKS)
    ]
    argv = [
        "convert",
        "--model",
        str(hf_dir),
        "--tp",
        str(tp),
        "--dtype",
        dtype,
        "--out",
        str(directory / "ft"),
    ]
    for (name, _), prefix in zip(TASKS, prefixes, strict=True):
        np.save(directory / f"{name}.npy", prefix)
        argv += ["--prefix", f"{name}={directory / name}.npy"]
    assert main(argv) == 0
    ft_dir = layout.ft_dir(directory / "ft", tp)
    cfg = layout.read_config(ft_dir)
    assert [t.name for t in cfg.tasks] == [n for n, _ in TASKS]
    if dtype == "fp16":  # HF gets exactly the values the files hold
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(param.half().float())
        prefixes = [p.astype(np.float16).astype(np.float32) for p in prefixes]
    return Built(model, cfg, ft_dir, prefixes)


def hf_logits(built: Built, ids: list[int], task_id: int | None) -> np.ndarray:
    return logits_with_prefix(built.model, ids, None if task_id is None else built.prefixes[task_id])


def hf_greedy(built: Built, ids: list[int], task_id: int | None, steps: int) -> list[int]:
    seq = list(ids)
    for _ in range(steps):
        seq.append(int(hf_logits(built, seq, task_id)[-1].argmax()))
    return seq[len(ids) :]


# every row a different task (or none), prefix length and input length
MIXED_ROWS = [
    [5, 17, 42, 99],
    [7, 3, 250, 11, 64, 1, 33],
    [300, 2],
    [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
]
MIXED_TASKS: list[int | None] = [2, None, 0, 1]

CONFIGS = [(1, True, 0.25), (2, False, 1.0), (2, True, 1.0), (1, False, 0.25)]


@pytest.fixture(
    scope="module", params=CONFIGS, ids=lambda c: f"tp{c[0]}-{'parallel' if c[1] else 'sequential'}-rot{c[2]}"
)
def built(request, tmp_path_factory) -> Built:
    tp, parallel, rotary_pct = request.param
    return build(tmp_path_factory.mktemp("ft"), tp, parallel, rotary_pct)


@pytest.fixture(scope="module")
def erf_engine(built: Built) -> Engine:
    return Engine.load(built.directory, gelu="erf")


def test_logits_match_hf_for_a_mixed_batch(built: Built, erf_engine: Engine) -> None:
    ours = erf_engine.logits(MIXED_ROWS, MIXED_TASKS)
    for row, ids, task_id in zip(ours, MIXED_ROWS, MIXED_TASKS, strict=True):
        assert row.shape == (len(ids), built.cfg.vocab_size)
        assert np.abs(row - hf_logits(built, ids, task_id)).max() < 1e-4


def test_greedy_20_tokens_match_hf_for_a_mixed_batch(built: Built, erf_engine: Engine) -> None:
    requests = [
        GenerationRequest(ids, 20, task_id=t, end_id=-1)
        for ids, t in zip(MIXED_ROWS, MIXED_TASKS, strict=True)
    ]
    results = erf_engine.generate(requests)
    for result, ids, task_id in zip(results, MIXED_ROWS, MIXED_TASKS, strict=True):
        assert result.generated_ids == hf_greedy(built, ids, task_id, 20)
        assert result.finish_reason == "length"


def test_incremental_decoding_equals_full_recomputation(built: Built, erf_engine: Engine) -> None:
    requests = [
        GenerationRequest(ids, 12, task_id=t, end_id=-1)
        for ids, t in zip(MIXED_ROWS, MIXED_TASKS, strict=True)
    ]
    step_logits = erf_engine.decode_logits(requests)
    results = erf_engine.generate(requests)
    full = erf_engine.logits(
        [ids + r.generated_ids for ids, r in zip(MIXED_ROWS, results, strict=True)], MIXED_TASKS
    )
    for steps, whole, ids in zip(step_logits, full, MIXED_ROWS, strict=True):
        # the logits that chose generated token i are the full pass's logits at position len(ids)-1+i
        np.testing.assert_allclose(steps, whole[len(ids) - 1 : len(ids) - 1 + 12], atol=2e-5, rtol=0)


def test_tanh_gelu_matches_hf_tanh_and_differs_from_erf(built: Built) -> None:
    engine = Engine.load(built.directory)  # FT's tanh GELU
    erf_diff = np.abs(engine.logits([MIXED_ROWS[1]], [0])[0] - hf_logits(built, MIXED_ROWS[1], 0)).max()
    assert erf_diff > 1e-4  # the GELU form is visible at this tolerance
    originals = [layer.mlp.act for layer in built.model.gpt_neox.layers]
    try:
        for layer in built.model.gpt_neox.layers:
            layer.mlp.act = ACT2FN["gelu_pytorch_tanh"]
        tanh_diff = np.abs(engine.logits([MIXED_ROWS[1]], [0])[0] - hf_logits(built, MIXED_ROWS[1], 0)).max()
    finally:
        for layer, act in zip(built.model.gpt_neox.layers, originals, strict=True):
            layer.mlp.act = act
    assert tanh_diff < 1e-4


def test_fp16_files_match_hf_with_the_same_rounded_weights(tmp_path: Path) -> None:
    # sequential residual: with the parallel one FT stores the two row-parallel biases as one
    # pre-summed fp16 tensor, whose rounding differs from HF's two rounded biases (~2e-4 here)
    built16 = build(tmp_path, 2, False, 0.25, dtype="fp16")
    engine = Engine.load(built16.directory, gelu="erf")
    for row, ids, task_id in zip(
        engine.logits(MIXED_ROWS, MIXED_TASKS), MIXED_ROWS, MIXED_TASKS, strict=True
    ):
        assert np.abs(row - hf_logits(built16, ids, task_id)).max() < 1e-4


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "sequential"])
def test_a_model_without_attention_biases_matches_hf(tmp_path: Path, parallel: bool) -> None:
    # GPTNeoXConfig.attention_bias false: transformers builds the attention without biases, FT
    # always adds them, so they must come out as zeros (and the parallel style's summed bias as
    # the MLP's alone)
    no_bias = build(tmp_path, 2, parallel, 0.25, attention_bias=False)
    names = [name for name, _ in no_bias.model.named_parameters()]
    assert not any(".attention." in name and name.endswith("bias") for name in names)
    engine = Engine.load(no_bias.directory, gelu="erf")
    for row, ids, task_id in zip(
        engine.logits(MIXED_ROWS, MIXED_TASKS), MIXED_ROWS, MIXED_TASKS, strict=True
    ):
        assert np.abs(row - hf_logits(no_bias, ids, task_id)).max() < 1e-4
    rows = zip(MIXED_ROWS, MIXED_TASKS, strict=True)
    results = engine.generate([GenerationRequest(ids, 8, task_id=t, end_id=-1) for ids, t in rows])
    for result, ids, task_id in zip(results, MIXED_ROWS, MIXED_TASKS, strict=True):
        assert result.generated_ids == hf_greedy(no_bias, ids, task_id, 8)
