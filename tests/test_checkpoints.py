"""Prefix checkpoint formats: each round-trips through the FT rank files to the original tensor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from convert_support import hf_json, ignores_peft_internal_warnings, prefix_cache, read_prefix_files

from ftprefix.commands.options import prefix_sources
from ftprefix.converter import convert
from ftprefix.converter.checkpoints import PrefixSource, load_checkpoint
from ftprefix.demo.toy import build_model, random_prefix
from ftprefix.errors import UserError
from ftprefix.hf_compat import cache_argument, load_gptneox

LAYERS, HIDDEN, HEADS = 2, 32, 4
HEAD_DIM = HIDDEN // HEADS


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hf") / "base"
    build_model(
        d, hidden_size=HIDDEN, num_heads=HEADS, num_layers=LAYERS, vocab_size=64, with_tokenizer=False, seed=3
    )
    return d


def _peft_adapter(hf_dir: Path, out: Path, config: object, seed: int) -> torch.Tensor:
    """A real PEFT adapter saved by PEFT itself, its trainable weights randomised; returns the tensor
    PEFT computes for the virtual tokens (what the adapter feeds the model)."""
    from peft import get_peft_model

    base = load_gptneox(hf_dir)
    peft_model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, param in peft_model.named_parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen))
    peft_model.save_pretrained(str(out))
    with torch.no_grad():
        return peft_model.get_prompt_embedding_to_save("default").detach().clone()


def _convert_and_read(hf_dir: Path, source: PrefixSource, tmp_path: Path, tp: int, p: int) -> np.ndarray:
    out = tmp_path / f"out-{source.name}-{tp}"
    convert(hf_dir, [source], out, tp=tp, dtype="fp32", progress=False, warn=lambda _m: None)
    return read_prefix_files(out / f"{tp}-gpu", source.name, hf_json(hf_dir), tp, "fp32", p)


def test_names_from_file_names_and_explicit_names():
    sources = prefix_sources(
        [
            "smileface_prefix_encoder.seed42.2022-10-01.best.checkpoint,adapters/shout",
            "x=a/b.pt",
            "c.npy",
            "smileface_suffix.task0.weight",  # rinna's published prefix, named as FT's jp converter does
            "other.task12.weight",
        ]
    )
    assert [(s.name, str(s.path)) for s in sources] == [
        ("smileface", "smileface_prefix_encoder.seed42.2022-10-01.best.checkpoint"),
        ("shout", "adapters/shout"),
        ("x", "a/b.pt"),
        ("c", "c.npy"),
        ("smileface_suffix", "smileface_suffix.task0.weight"),
        ("other", "other.task12.weight"),
    ]


@pytest.mark.parametrize("tp", [1, 2])
def test_rinna_tensor_round_trips(hf_dir, tmp_path, tp):
    # rinna saves prefix_mlp(prefix_wte.weight): a non-leaf tensor that still requires grad
    leaf = random_prefix(5, LAYERS, HIDDEN, seed=11).requires_grad_(True)
    saved = leaf * 1.0
    path = tmp_path / "emoji_prefix_encoder.seed1.checkpoint"
    torch.save(saved, path)
    source = PrefixSource.at(path)
    assert source.name == "emoji"
    got = _convert_and_read(hf_dir, source, tmp_path, tp, 5)
    np.testing.assert_array_equal(got, saved.detach().numpy().reshape(5, LAYERS, 2, HEADS, HEAD_DIM))


def test_rinna_encoder_state_dict_applies_the_mlp(hf_dir, tmp_path):
    torch.manual_seed(0)
    wte = torch.nn.Embedding(4, 6)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, LAYERS * 2 * HIDDEN)
    )
    state = {f"prefix_wte.{k}": v for k, v in wte.state_dict().items()}
    state.update({f"prefix_mlp.{k}": v for k, v in mlp.state_dict().items()})
    path = tmp_path / "enc_prefix_encoder.ckpt"
    torch.save({"model": state}, path)
    with torch.no_grad():
        expected = mlp(wte.weight).numpy()
    got = _convert_and_read(hf_dir, PrefixSource("enc", path), tmp_path, 2, 4)
    np.testing.assert_allclose(got, expected.reshape(4, LAYERS, 2, HEADS, HEAD_DIM), atol=1e-6)


@ignores_peft_internal_warnings
@pytest.mark.parametrize("projection", [False, True])
def test_peft_prefix_adapter_round_trips_and_means_what_peft_means(hf_dir, tmp_path, projection):
    from peft import PeftModel, PrefixTuningConfig, TaskType

    adapter = tmp_path / "shout"
    config = PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=3,
        prefix_projection=projection,
        encoder_hidden_size=16,
    )
    embeddings = _peft_adapter(hf_dir, adapter, config, seed=5)
    source = PrefixSource.at(adapter)
    assert source.name == "shout"
    loaded = load_checkpoint(source, hidden_size=HIDDEN)
    assert loaded.kind == "prefix"
    got = _convert_and_read(hf_dir, source, tmp_path, 2, 3)
    np.testing.assert_allclose(got, embeddings.numpy().reshape(3, LAYERS, 2, HEADS, HEAD_DIM), atol=1e-6)

    # Semantics: HF with our prefix as past_key_values == PEFT running its own adapter.
    ids = torch.tensor([[5, 9, 2, 7]])
    base = load_gptneox(hf_dir)
    with torch.no_grad():
        ours = base(input_ids=ids, **cache_argument(base, prefix_cache(got))).logits
        peft_model = PeftModel.from_pretrained(load_gptneox(hf_dir), str(adapter))
        theirs = peft_model.eval()(input_ids=ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4


def test_plain_tensors_are_prefixes_or_soft_prompts_by_width(tmp_path):
    from safetensors.torch import save_file

    prefix = random_prefix(2, LAYERS, HIDDEN, seed=1)
    soft = torch.randn(3, HIDDEN)
    torch.save(prefix.half(), tmp_path / "p16.pt")
    np.save(tmp_path / "soft.npy", soft.numpy())
    save_file({"prompt_embeddings": soft}, str(tmp_path / "soft.safetensors"))
    torch.save({"prompt_embeddings": prefix}, tmp_path / "dict.bin")

    p16 = load_checkpoint(PrefixSource("p16", tmp_path / "p16.pt"), hidden_size=HIDDEN)
    assert (p16.kind, p16.tensor.dtype) == ("prefix", np.float32)
    np.testing.assert_array_equal(p16.tensor, prefix.half().float().numpy())
    for name in ("soft.npy", "soft.safetensors"):
        loaded = load_checkpoint(PrefixSource("s", tmp_path / name), hidden_size=HIDDEN)
        assert loaded.kind == "soft_prompt"
        np.testing.assert_array_equal(loaded.tensor, soft.numpy())
    in_dict = load_checkpoint(PrefixSource("d", tmp_path / "dict.bin"), hidden_size=HIDDEN)
    assert in_dict.kind == "prefix"
    np.testing.assert_array_equal(in_dict.tensor, prefix.numpy())


@ignores_peft_internal_warnings
def test_peft_prompt_tuning_adapters_are_soft_prompts(hf_dir, tmp_path):
    from peft import PromptEncoderConfig, PromptTuningConfig, TaskType

    for name, config in {
        "pt": PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4),
        "ptun": PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3, encoder_hidden_size=8
        ),
    }.items():
        embeddings = _peft_adapter(hf_dir, tmp_path / name, config, seed=9)
        loaded = load_checkpoint(PrefixSource(name, tmp_path / name))
        assert loaded.kind == "soft_prompt"
        assert json.loads((tmp_path / name / "adapter_config.json").read_text())["token_dim"] == HIDDEN
        np.testing.assert_allclose(loaded.tensor, embeddings.numpy(), atol=1e-6)


def test_many_checkpoints_from_a_list_file_or_a_directory(tmp_path):
    (tmp_path / "ckpts" / "adapter").mkdir(parents=True)
    (tmp_path / "ckpts" / "adapter" / "adapter_config.json").write_text("{}")
    for name in ("b.npy", "a.pt", "smileface_suffix.task0.weight", "notes.txt", ".hidden.npy"):
        (tmp_path / "ckpts" / name).write_bytes(b"")
    found = prefix_sources([], [tmp_path / "ckpts"])
    assert [(s.name, s.path.name) for s in found] == [
        ("a", "a.pt"),
        ("adapter", "adapter"),
        ("b", "b.npy"),
        ("smileface_suffix", "smileface_suffix.task0.weight"),
    ]
    listing = tmp_path / "lists" / "tasks.txt"
    listing.parent.mkdir()
    # as Windows' Notepad saves it: a byte order mark first, CRLF line ends
    listing.write_bytes(b"\xef\xbb\xbfx=../ckpts/a.pt\r\n# tenants\r\n\r\n /abs/y.npy \r\nz = ../ckpts/b.npy")
    from_file = prefix_sources([f"@{listing}", "w=w.pt"])
    assert [(s.name, str(s.path)) for s in from_file] == [
        ("x", str(tmp_path / "lists" / "../ckpts/a.pt")),
        ("y", "/abs/y.npy"),
        ("z", str(tmp_path / "lists" / "../ckpts/b.npy")),
        ("w", "w.pt"),
    ]
    for values, dirs, message in (
        ([f"@{tmp_path / 'missing.txt'}"], [], "cannot read the checkpoint list"),
        ([f"@{tmp_path / 'ckpts' / 'notes.txt'}"], [], "lists no checkpoints"),
        ([], [tmp_path / "lists"], "holds no checkpoint"),
        ([], [tmp_path / "nope"], "is not a directory"),
    ):
        with pytest.raises(UserError, match=message):
            prefix_sources(values, dirs)
