"""ftprefix.text against answers recorded from Hugging Face's slow tokenizers (transformers 4.57):
the rinna-style T5Tokenizer (spiece.model, 79 texts) and a Llama-style LlamaTokenizer
(tokenizer.model, byte fallback), their decodes, and what generated ids add to a prompt. Also the
tokenizer.json path against transformers' fast tokenizer, rinna's newline convention, stop and bad
words, and the directories that must be refused."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from sentencepiece_reference import (
    LLAMA,
    RINNA,
    LlamaReference,
    RinnaReference,
    golden_rows,
    recorded_continuations,
)

from ftprefix.cli import main
from ftprefix.client import Client, FtprefixClientError
from ftprefix.text import TokenizerError, load_tokenizer
from ftprefix.text.added_token_split import AddedTokenSplitter, build_trie, split_at_tokens
from ftprefix.text.base import common_prefix_length
from ftprefix.text.settled import SettledText

RECORDED = [RINNA, LLAMA]


@pytest.mark.parametrize("directory", RECORDED, ids=lambda d: d.name)
def test_every_recorded_encode_and_decode_is_reproduced(directory: Path) -> None:
    tokenizer = load_tokenizer(directory)
    rows = golden_rows(directory)
    assert len(rows) == {RINNA: 79, LLAMA: 42}[directory]
    for row in rows:
        assert tokenizer.encode(row["text"]) == row["ids"], row["text"]
        assert tokenizer.decode(row["ids"]) == row["decode_skip_special"], row["text"]


@pytest.mark.parametrize("directory", RECORDED, ids=lambda d: d.name)
def test_a_completion_is_what_the_prompt_continues_with(directory: Path) -> None:
    tokenizer = load_tokenizer(directory)
    rows = recorded_continuations(directory)
    assert len(rows) > 100
    # the rule makes a difference here: decoding the generated ids alone loses a leading space
    differs = 0
    for row in rows:
        before, after = row["decode_prompt"], row["decode_all"]
        assert after.startswith(before)
        text = tokenizer.continuation(row["prompt_ids"], row["generated_ids"])
        assert text == after[len(before) :], row
        differs += text != tokenizer.decode(row["generated_ids"])
        # as a stream asks, at every token for all of them so far: the same text at the end
        stream, generated = tokenizer.continuing(row["prompt_ids"]), row["generated_ids"]
        assert [stream.text(generated[:k]) for k in range(1, len(generated) + 1)][-1] == text
    assert differs > 10


REFERENCES = {RINNA: RinnaReference, LLAMA: LlamaReference}


@pytest.mark.parametrize("directory", RECORDED, ids=lambda d: d.name)
def test_the_reference_decoders_of_the_tests_agree_with_the_recorded_answers(directory: Path) -> None:
    reference = REFERENCES[directory]()
    for row in golden_rows(directory):
        assert reference.decode(row["ids"]) == row["decode_skip_special"]
    for row in recorded_continuations(directory):
        assert reference.decode(row["prompt_ids"] + row["generated_ids"]) == row["decode_all"]


def test_the_client_tokenises_with_the_same_implementation() -> None:
    client = Client("localhost:1", tokenizer=RINNA)  # no connection is made before a call
    assert client.tokenizer is not None
    row = golden_rows(RINNA)[9]
    assert client.tokenizer.encode(row["text"]) == row["ids"]
    assert client.tokenizer.eos_id == 3 and "T5Tokenizer" in client.tokenizer.description


def _long_stream(tokenizer, seed: int) -> list[int]:
    """A prompt and its continuation as long as a stream's, of everything a model may generate:
    encoded Japanese, emoji (byte pieces), spaces, special tokens, random ids."""
    rng = random.Random(seed)
    texts = ["日本語のテキストです。", " 🎉🦜 ", "  spaces\tand\nlines ", "English words, too."]
    ids: list[int] = []
    while len(ids) < 700:
        ids += (
            tokenizer.encode(rng.choice(texts))
            if rng.random() < 0.5
            else [rng.randrange(tokenizer.vocab_size)]
        )
    return ids


@pytest.mark.parametrize("settle_every", [64, 1], ids=["default", "at-every-token"])
@pytest.mark.parametrize("directory", RECORDED, ids=lambda d: d.name)
def test_a_long_stream_shows_at_every_token_what_the_reference_decodes(
    directory: Path, settle_every: int, monkeypatch
) -> None:
    # how often a stream's settled head moves: at every token, it moves into every byte sequence
    monkeypatch.setattr(SettledText, "SETTLE_EVERY", settle_every)
    reference, tokenizer = REFERENCES[directory](), load_tokenizer(directory)
    for seed in (1, 2):
        ids = _long_stream(tokenizer, seed)
        prompt, generated = ids[:200], ids[200:]
        before = reference.decode(prompt)
        stream = tokenizer.continuing(prompt)
        # the runs of pieces are longer than SETTLE_EVERY
        for k in range(1, len(generated) + 1):
            whole = reference.decode(prompt + generated[:k])
            shared = common_prefix_length(before, whole)
            assert stream.text(generated[:k]) == whole[shared:], (seed, k)


def test_tokenizer_json_equals_transformers_fast_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from ftprefix.demo import toy

    hf = toy.build_tokenizer(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    assert AutoTokenizer.from_pretrained(str(tmp_path)).is_fast
    for text in [*toy.TOY_SENTENCES, "unseen wörds ✓", "  spaces  ", "<|endoftext|>inside"]:
        ids = tokenizer.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == hf.decode(ids, skip_special_tokens=True)
        # ids as FT's output tensors hold them (uint32), read without converting each one first
        whole, prompt = hf.decode(ids, skip_special_tokens=True), hf.decode(ids[:1], skip_special_tokens=True)
        row = np.asarray(ids, dtype=np.uint32)
        assert tokenizer.decode(row) == whole
        assert whole.startswith(prompt)
        assert tokenizer.continuation(row[:1], row[1:]) == whole[len(prompt) :]
    assert tokenizer.eos_id == hf.eos_token_id


def test_the_newline_convention_is_opt_in_and_exact() -> None:
    plain, rinna = load_tokenizer(RINNA), load_tokenizer(RINNA, newline_token="<NL>")
    row = next(r for r in golden_rows(RINNA) if "<NL>" in r["text"])
    with_newline = row["text"].replace("<NL>", "\n")
    assert rinna.encode(with_newline) == row["ids"]  # \n sent as <NL>
    assert plain.encode(with_newline) != row["ids"]  # off by default: \n is whitespace to SentencePiece
    assert rinna.decode(row["ids"]) == row["decode_skip_special"].replace("<NL>", "\n")
    nl = plain.token_to_id("<NL>")
    prompt = plain.encode("こんにちは")
    assert rinna.continuation(prompt, [nl, *plain.encode("世界")]).startswith("\n")


def test_stop_and_bad_words_match_where_the_model_generates_them() -> None:
    tokenizer = load_tokenizer(RINNA, newline_token="<NL>")
    nl = tokenizer.token_to_id("<NL>")
    # encoded alone, a word gets SentencePiece's leading "▁" piece; mid-sentence the model does not
    assert tokenizer.encode("\n") == [tokenizer.token_to_id("\u2581"), nl]
    assert tokenizer.encode_word("\n") == [nl]
    sentence = tokenizer.encode("ください。\nシステム")
    word = tokenizer.encode_word("。")
    assert any(sentence[i : i + len(word)] == word for i in range(len(sentence)))
    assert load_tokenizer(RINNA).encode_word(" 世界") == load_tokenizer(RINNA).encode(" 世界")


def _copy(src: Path, dest: Path, **config_changes: object) -> Path:
    shutil.copytree(src, dest)
    path = dest / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key, value in config_changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config), encoding="utf-8")
    return dest


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"tokenizer_class": "BertJapaneseTokenizer"}, "names BertJapaneseTokenizer"),
        ({"added_tokens_decoder": {"32000": {"content": "<w>", "single_word": True}}}, "single_word"),
        ({"tokenizer_class": "LlamaTokenizer"}, "tokenizer.model"),
        ({"sp_model_kwargs": {"enable_sampling": True}}, "sp_model_kwargs"),
        ({"extra_ids": 3, "additional_special_tokens": ["<extra_id_0>"]}, "extra_ids is 3"),
    ],
)
def test_a_tokenizer_that_cannot_be_read_exactly_is_refused(tmp_path: Path, change, expected) -> None:
    directory = _copy(RINNA, tmp_path / "tok", **change)
    with pytest.raises(TokenizerError) as refused:
        load_tokenizer(directory)
    message = str(refused.value)
    assert expected in message and str(directory) in message and "\n" not in message
    with pytest.raises(FtprefixClientError):
        Client("localhost:1", tokenizer=directory)


def test_a_missing_model_file_is_one_line_naming_file_and_class(tmp_path: Path, capsys) -> None:
    directory = tmp_path / "tok"
    shutil.copytree(RINNA, directory)
    (directory / "spiece.model").unlink()
    assert main(["generate", "--tokenizer", str(directory), "--url", "localhost:1", "hello"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "T5Tokenizer" in err and str(directory / "spiece.model") in err


def test_added_tokens_cut_the_text_where_transformers_trie_cuts_it() -> None:
    """401 cases recorded from transformers 4.57's Trie.split (tests/data/tokenizers/
    trie-splits.json), 57 of them not what a leftmost-longest regular expression gives."""
    recorded = json.loads((RINNA.parent / "trie-splits.json").read_text(encoding="utf-8"))
    assert "transformers 4.57" in recorded["oracle"]
    unlike_a_regex = 0
    for case in recorded["cases"]:
        tokens, text = case["tokens"], case["text"]
        assert AddedTokenSplitter(tokens).split(text) == case["split"], case
        assert split_at_tokens(text, build_trie(tokens)) == case["split"], case  # without the jumps
        pattern = re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))
        unlike_a_regex += _regex_split(pattern, text) != case["split"]
    assert unlike_a_regex == 57


def _regex_split(pattern: re.Pattern[str], text: str) -> list[str]:
    pieces, previous = [], 0
    for match in pattern.finditer(text):
        pieces += [text[previous : match.start()], match.group()]
        previous = match.end()
    return [p for p in [*pieces, text[previous:]] if p]


def test_newline_token_without_a_tokenizer_is_refused() -> None:
    with pytest.raises(FtprefixClientError, match="newline_token needs tokenizer"):
        Client("localhost:1", newline_token="<NL>")
