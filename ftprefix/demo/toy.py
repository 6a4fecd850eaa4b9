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
    layer_norm_eps: float = 1e-5,
    hidden_act: str = "gelu_new",
    max_position_embeddings: int = 512,
    seed: int = 0,
    scale: float = 0.2,
    with_tokenizer: bool = True,
    tokenizer_sentences: Sequence[str] = TOY_SENTENCES,
    tokenizer_vocab_size: int | None = None,
    safe_serialization: bool = True,
) -> Any:
    """Make a randomly initialised GPTNeoXForCausalLM (fp32, eval mode); save it to `directory` if given.

    `layer_norm_eps` and `hidden_act` (tanh GELU) default to what FasterTransformer computes, so
    Hugging Face and FT semantics agree.
    The tokenizer (if any) is saved next to it; the model's vocab is at least the tokenizer's.
    """
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = None
    if with_tokenizer and directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        tokenizer = build_tokenizer(
            directory, vocab_size=tokenizer_vocab_size or min(vocab_size, 400), sentences=tokenizer_sentences
        )
        vocab_size = max(vocab_size, len(tokenizer))
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN) if tokenizer is not None else 0
    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_attention_heads=num_heads,
        num_hidden_layers=num_layers,
        intermediate_size=intermediate_size or 4 * hidden_size,
        rotary_pct=rotary_pct,
        rotary_emb_base=10000,
        use_parallel_residual=use_parallel_residual,
        layer_norm_eps=layer_norm_eps,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=eos_id,
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
        model.save_pretrained(str(directory), safe_serialization=safe_serialization)
    return model


def random_prefix(
    prompt_length: int, num_layers: int, hidden_size: int, seed: int = 0, scale: float = 1.0
) -> Any:
    """A canonical prefix tensor [P, layers*2*hidden] (float32) as rinna/PEFT produce it."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randn(prompt_length, num_layers * 2 * hidden_size, generator=gen) * scale
