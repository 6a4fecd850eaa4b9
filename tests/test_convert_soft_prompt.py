"""A soft prompt converted to a prefix gives the logits of feeding the soft prompt itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from convert_support import hf_json, ignores_peft_internal_warnings, prefix_cache, read_prefix_files

from ftprefix.converter import convert
from ftprefix.converter.checkpoints import PrefixSource
from ftprefix.demo.toy import build_model
from ftprefix.hf_compat import cache_argument, load_gptneox

HIDDEN, HEADS, LAYERS = 32, 4, 3


@pytest.fixture(scope="module", params=["parallel", "sequential"])
def hf_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hf") / request.param
    build_model(
        d,
        hidden_size=HIDDEN,
        num_heads=HEADS,
        num_layers=LAYERS,
        vocab_size=64,
        with_tokenizer=False,
        use_parallel_residual=request.param == "parallel",
        rotary_pct=0.5,
        seed=4,
    )
    return d


def _hf(hf_dir: Path):

    return load_gptneox(hf_dir)


@pytest.mark.parametrize("tp", [1, 2])
def test_prefix_from_soft_prompt_gives_the_same_logits(hf_dir, tmp_path, tp):
    p = 5
    soft = torch.randn(p, HIDDEN, generator=torch.Generator().manual_seed(8))
    torch.save(soft, tmp_path / "soft.pt")
    out = tmp_path / "out"
    report = convert(
        hf_dir,
        [PrefixSource("soft", tmp_path / "soft.pt")],
        out,
        tp=tp,
        dtype="fp32",
        progress=False,
        warn=lambda _m: None,
    )
    assert [(t.name, t.kind, t.prompt_length) for t in report.tasks] == [("soft", "soft_prompt", p)]
    prefix = read_prefix_files(out / f"{tp}-gpu", "soft", hf_json(hf_dir), tp, "fp32", p)

    model = _hf(hf_dir)
    ids = torch.tensor([[3, 17, 42, 8, 1, 60]])
    with torch.no_grad():
        with_prefix = model(input_ids=ids, **cache_argument(model, prefix_cache(prefix))).logits[0]
        embeds = torch.cat([soft.unsqueeze(0), model.get_input_embeddings()(ids)], dim=1)
        with_soft_prompt = model(inputs_embeds=embeds).logits[0, p:]
    assert (with_prefix - with_soft_prompt).abs().max().item() < 1e-4
    # and the prefix is not trivially close to something else: no prefix changes the logits
    with torch.no_grad():
        plain = model(input_ids=ids).logits[0]
    assert (plain - with_soft_prompt).abs().max().item() > 1e-2


@ignores_peft_internal_warnings
def test_peft_prompt_tuning_adapter_gives_peft_logits(hf_dir, tmp_path):
    from peft import PeftModel, PromptTuningConfig, TaskType, get_peft_model

    adapter = tmp_path / "pt"
    peft_model = get_peft_model(
        _hf(hf_dir), PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
    )
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(2)))
    peft_model.save_pretrained(str(adapter))

    out = tmp_path / "out"
    convert(
        hf_dir,
        [PrefixSource("pt", adapter)],
        out,
        tp=1,
        dtype="fp32",
        progress=False,
        warn=lambda _m: None,
    )
    prefix = read_prefix_files(out / "1-gpu", "pt", hf_json(hf_dir), 1, "fp32", 4)
    ids = torch.tensor([[9, 4, 33]])
    with torch.no_grad():
        model = _hf(hf_dir)
        ours = model(input_ids=ids, **cache_argument(model, prefix_cache(prefix))).logits[0]
        theirs = PeftModel.from_pretrained(_hf(hf_dir), str(adapter)).eval()(input_ids=ids).logits[0, -3:]
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-4)
