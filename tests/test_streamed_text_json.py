"""A stream's text with a tokenizer.json tokenizer, at every token, against the `tokenizers`
library decoding the whole prompt + answer (PreTrainedTokenizerFast's decode, which ftprefix's
JsonTokenizer reads through its settled head and tail at every streamed token).

Three kinds of decoder GPT-NeoX-family models ship, each built here with `tokenizers`:
byte-level BPE (GPT-NeoX, Pythia), Metaspace with byte fallback, Fuse and Strip (Llama's fast
tokenizer), and WordPiece with its `##` continuations."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers

from ftprefix.demo import toy
from ftprefix.text import load_tokenizer
from ftprefix.text.base import common_prefix_length
from ftprefix.text.settled import SettledText

TEXTS = ["日本語のテキストです。", " 🎉🦜 ", "  spaces\tand\nlines ", "English words, too.", "ab", "running"]
WORDS = ["a", "b", "ab", "Eng", "lish", "words", "too", "run", "ning", "spaces", "and", "lines", "日本"]


def _byte_level(directory: Path) -> None:
    toy.build_tokenizer(directory, sentences=[*toy.TOY_SENTENCES, *TEXTS])


def _metaspace_byte_fallback(directory: Path) -> None:
    """Llama's fast tokenizer's shape: a Unigram model over ▁-words with byte-fallback pieces."""
    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]
    vocab += [(f"<0x{b:02X}>", -20.0) for b in range(256)]
    vocab += [(piece, -5.0 - i / 10) for i, w in enumerate(WORDS) for piece in (w, "\u2581" + w)]
    vocab += [(c, -15.0) for c in "abcdefghijklmnopqrstuvwxyzEL,.。\u2581"]
    tok = RustTokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(["<s>", "</s>"])
    directory.mkdir()
    tok.save(str(directory / "tokenizer.json"))


def _wordpiece(directory: Path) -> None:
    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2}
    for piece in [*WORDS, *("##" + w for w in WORDS), *"abcdefghijklmnopqrstuvwxyz,.。"]:
        vocab.setdefault(piece, len(vocab))
    tok = RustTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(["[CLS]", "[SEP]"])
    directory.mkdir()
    tok.save(str(directory / "tokenizer.json"))


KINDS = {
    "byte-level": _byte_level,
    "metaspace-byte-fallback": _metaspace_byte_fallback,
    "wordpiece": _wordpiece,
}


@pytest.mark.parametrize("settle_every", [64, 1], ids=["default", "at-every-token"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_long_stream_shows_at_every_token_what_the_tokenizers_library_decodes(
    kind: str, settle_every: int, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(SettledText, "SETTLE_EVERY", settle_every)
    directory = tmp_path / kind
    KINDS[kind](directory)
    reference = RustTokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer = load_tokenizer(directory)
    rng = random.Random(0)
    ids: list[int] = []
    while len(ids) < 600:  # encoded text (emoji as bytes), specials and random ids
        if rng.random() < 0.5:
            ids += reference.encode(rng.choice(TEXTS), add_special_tokens=False).ids
        else:
            ids.append(rng.randrange(reference.get_vocab_size(with_added_tokens=True)))
    prompt, generated = ids[:150], ids[150:]
    before = reference.decode(prompt, skip_special_tokens=True)
    stream = tokenizer.continuing(prompt)
    for k in range(1, len(generated) + 1):
        whole = reference.decode(prompt + generated[:k], skip_special_tokens=True)
        assert stream.text(generated[:k]) == whole[common_prefix_length(before, whole) :], k
    # asked for fewer tokens (a stop string's search), then for all of them again
    assert stream.text(generated[:5]) == tokenizer.continuation(prompt, generated[:5])
    assert stream.text(generated) == whole[common_prefix_length(before, whole) :]
