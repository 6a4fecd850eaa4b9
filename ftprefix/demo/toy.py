"""Tiny GPT-NeoX models and tokenizers built locally (no network): for tests, the demo and benchmarks.

Every parameter is randomised, biases and LayerNorm weights included: Hugging Face initialises
biases to 0 and LayerNorm weights to 1, which would hide a wrong bias rule or a swapped file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TOY_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A prefix is a small tensor of learned keys and values for every layer.",
    "One base model serves many tasks; each request names its task.",
    "FasterTransformer runs GPT-NeoX on the GPU inside Triton Inference Server.",
    "Hello world! How are you today? I am fine, thank you.",
    "Numbers like 1 2 3 4 5 6 7 8 9 10 appear in text too.",
    "the cat sat on the mat and the dog sat on the log",
    "Smile :) and the world smiles with you.",
]

EOS_TOKEN = "<|endoftext|>"


def build_tokenizer(
    directory: str | os.PathLike[str], vocab_size: int = 200, sentences: Sequence[str] = TOY_SENTENCES
) -> Any:
    """Train a byte-level BPE tokenizer on a few sentences and save it as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(sentences), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN
    )
    fast.save_pretrained(str(directory))
    return fast


# rinna's japanese-gpt-neox layout: these ids, and the symbols that are whole pieces
SENTENCEPIECE_SPECIALS = {"pad_token": "[PAD]", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
SENTENCEPIECE_SYMBOLS = ["[CLS]", "[SEP]", "[MASK]", "<NL>"]


def build_sentencepiece_tokenizer(
    directory: str | os.PathLike[str], vocab_size: int = 200, sentences: Sequence[str] = TOY_SENTENCES
) -> Path:
    """Train a SentencePiece unigram model on a few sentences and save it as rinna's models ship
    theirs: `spiece.model` with a T5Tokenizer config ([PAD]=0, <unk>=1, <s>=2, </s>=3)."""
    import io
    import json

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences)),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a handful of sentences may not fill the vocabulary
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        pad_piece="[PAD]",
        user_defined_symbols=SENTENCEPIECE_SYMBOLS,
        character_coverage=1.0,
        minloglevel=2,
    )
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / "spiece.model").write_bytes(model.getvalue())
    config = {
        **SENTENCEPIECE_SPECIALS,
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
        "extra_ids": 0,
        "additional_special_tokens": [],
        "do_lower_case": False,
        "tokenizer_class": "T5Tokenizer",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    specials = {k: v for k, v in config.items() if k.endswith("_token")}
    (path / "special_tokens_map.json").write_text(json.dumps(specials, indent=1) + "\n", encoding="utf-8")
    return path


def build_model(
    directory: str | os.PathLike[str] | None = None,
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_heads: int = 8,
    num_layers: int = 2,
    intermediate_size: int | None = None,
    rotary_pct: float = 0.25,
    use_parallel_residual: bool = True,
    attention_bias: bool = True,
    layer_norm_eps: float = 1e-5,
    hidden_act: str = "gelu_new",
    max_position_embeddings: int = 512,
    seed: int = 0,
    scale: float = 0.2,
    with_tokenizer: bool = True,
    tokenizer_sentences: Sequence[str] = TOY_SENTENCES,
    tokenizer_vocab_size: int | None = None,
    tokenizer_kind: str = "bpe",
    tokenizer_from: str | os.PathLike[str] | None = None,
    safe_serialization: bool = True,
) -> Any:
    """Make a randomly initialised GPTNeoXForCausalLM (fp32, eval mode); save it to `directory` if given.

    `layer_norm_eps` and `hidden_act` (tanh GELU) default to what FasterTransformer computes, so
    Hugging Face and FT semantics agree.
    The tokenizer (if any) is saved next to it: byte-level BPE (`tokenizer_kind="bpe"`, a
    tokenizer.json), a rinna-style SentencePiece model trained here ("sentencepiece"), or the files
    of `tokenizer_from`; the model's vocab is at least the tokenizer's, its bos/eos are the tokenizer's.
    """
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from ftprefix.text import copy_tokenizer_files, load_tokenizer

    bos_id = eos_id = 0
    if with_tokenizer and directory is not None:
        size = tokenizer_vocab_size or min(vocab_size, 400)
        if tokenizer_from is not None:
            copy_tokenizer_files(tokenizer_from, directory)
        elif tokenizer_kind == "sentencepiece":
            build_sentencepiece_tokenizer(directory, vocab_size=size, sentences=tokenizer_sentences)
        elif tokenizer_kind == "bpe":
            Path(directory).mkdir(parents=True, exist_ok=True)
            build_tokenizer(directory, vocab_size=size, sentences=tokenizer_sentences)
        else:
            raise ValueError(f"tokenizer_kind is 'bpe' or 'sentencepiece', got {tokenizer_kind!r}")
        tokenizer = load_tokenizer(directory)
        vocab_size = max(vocab_size, tokenizer.vocab_size)
        eos_id = tokenizer.eos_id or 0
        bos = tokenizer.special_token("bos_token")
        bos_id = (tokenizer.token_to_id(bos) if bos is not None else None) or eos_id
    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_attention_heads=num_heads,
        num_hidden_layers=num_layers,
        intermediate_size=intermediate_size or 4 * hidden_size,
        rotary_pct=rotary_pct,
        rotary_emb_base=10000,
        use_parallel_residual=use_parallel_residual,
        attention_bias=attention_bias,
        layer_norm_eps=layer_norm_eps,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        hidden_act=hidden_act,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * scale
            if "layernorm" in name or "layer_norm" in name:
                param.copy_((1.0 + noise) if name.endswith("weight") else noise)
            else:
                param.copy_(noise)
    if directory is not None:
        save_model(model, directory, safe_serialization=safe_serialization)
    return model


def save_model(model: Any, directory: str | os.PathLike[str], safe_serialization: bool = True) -> None:
    """`save_pretrained` without its progress bar, which for a model of one shard is noise in the
    demo's output and the benchmarks'; the caller's setting of the bar is kept."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(directory), safe_serialization=safe_serialization)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def random_prefix(
    prompt_length: int, num_layers: int, hidden_size: int, seed: int = 0, scale: float = 1.0
) -> Any:
    """A canonical prefix tensor [P, layers*2*hidden] (float32) as rinna/PEFT produce it."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randn(prompt_length, num_layers * 2 * hidden_size, generator=gen) * scale
