"""ftprefix.text against transformers' own SentencePiece test fixtures (../shared/tokenizers/
hf-test-fixtures), built into tokenizer directories the way transformers' T5 and Llama tests build
them (tools/record_tokenizer_answers.py --hf-fixtures): every model with T5Tokenizer and
LlamaTokenizer, bare and saved, with split_special_tokens, lstrip/rstrip added tokens, legacy: false,
and special tokens that are not pieces of the model. Answers recorded from transformers 4.57.6's
slow tokenizers are committed in tests/data/tokenizers/hf-fixtures; the models stay in ../shared."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ftprefix.text import TokenizerError, load_tokenizer
from ftprefix.text.settled import SettledText

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT.parent / "shared" / "tokenizers" / "hf-test-fixtures"
DATA = Path(__file__).resolve().parent / "data" / "tokenizers" / "hf-fixtures"
MODEL_FILES = {"T5Tokenizer": "spiece.model", "LlamaTokenizer": "tokenizer.model"}
DIRECTORIES = sorted(p.name for p in DATA.iterdir() if p.is_dir())
TEXTS = json.loads((DATA / "texts.json").read_text(encoding="utf-8"))


def _answers(name: str) -> dict:
    return json.loads((DATA / name / "answers.json").read_text(encoding="utf-8"))


def _assemble(name: str, tmp_path: Path, **config_changes: object) -> Path:
    """The recorded directory with its model from ../shared, the config changed as given."""
    if not MODELS.is_dir():
        pytest.skip(f"{MODELS} is absent: transformers' fixture models live in ../shared (CI has it)")
    directory = tmp_path / name
    shutil.copytree(DATA / name, directory, ignore=shutil.ignore_patterns("answers.json"))
    class_name = name.split("--")[1]
    shutil.copyfile(MODELS / _answers(name)["model"], directory / MODEL_FILES[class_name])
    if config_changes:
        path = directory / "tokenizer_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config.update(config_changes)
        path.write_text(json.dumps(config), encoding="utf-8")
    return directory


def test_every_model_is_recorded_with_both_classes_in_every_setting() -> None:
    models = {_answers(name)["model"] for name in DIRECTORIES}
    assert len(models) == 6 and len(DIRECTORIES) == 6 * 17
    settings = {name.split("--", 2)[2] for name in DIRECTORIES}
    assert {"bare", "saved", "split-special-tokens", "strip-tokens", "legacy-false"} <= settings
    assert {"legacy-false-saved", "specials-not-in-model", "extra-ids-0"} <= settings
    assert all("transformers 4.57" in _answers(name)["oracle"] for name in DIRECTORIES)


@pytest.mark.parametrize("name", DIRECTORIES)
def test_encode_and_decode_equal_transformers_slow_tokenizer(name: str, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(_assemble(name, tmp_path))
    answers = _answers(name)
    assert len(answers["encode"]) == len(TEXTS)
    for text, ids, decoded in zip(TEXTS, answers["encode"], answers["decode_encoded"], strict=True):
        assert tokenizer.encode(text) == ids, text
        assert tokenizer.decode(ids) == decoded, ids
    for ids, decoded in answers["decode"]:
        assert tokenizer.decode(ids) == decoded, ids


@pytest.mark.parametrize("name", DIRECTORIES)
def test_a_prompt_continues_with_what_transformers_decodes_after_it(
    name: str, tmp_path: Path, monkeypatch
) -> None:
    # a stream's settled head moves at every token here, across every kind of piece these hold
    monkeypatch.setattr(SettledText, "SETTLE_EVERY", 1)
    tokenizer = load_tokenizer(_assemble(name, tmp_path))
    answers = _answers(name)
    assert len(answers["continuations"]) == 30
    for text_index, list_index, whole in answers["continuations"]:
        prompt = answers["encode"][text_index]
        before = answers["decode_encoded"][text_index]
        generated = answers["decode"][list_index][0]
        # what decode(prompt + generated) adds after decode(prompt), both as transformers decodes
        shared = 0
        while shared < min(len(before), len(whole)) and before[shared] == whole[shared]:
            shared += 1
        expected = whole[shared:]
        assert tokenizer.continuation(prompt, generated) == expected, (prompt, generated)
        stream = tokenizer.continuing(prompt)
        # as a stream asks: again and again, each time for all the tokens so far, and once more
        # for fewer (a stop string's search) and for all of them again
        texts = [stream.text(generated[:k]) for k in range(1, len(generated) + 1)]
        _, again = stream.text(generated[:1]), stream.text(generated)
        assert texts[-1] == again == expected


# Values transformers' own tests write for test_sentencepiece.model
# (huggingface/transformers, tests/models/t5/test_tokenization_t5.py: T5TokenizationTest and
# CommonSpmIntegrationTests, whose tokenizer is T5Tokenizer(SAMPLE_VOCAB, extra_ids=0,
# legacy=False) with "<extra_id_0>" added as a special token that strips nothing).
LEGACY_VALUES = {
    "This is a test": [285, 46, 10, 170, 382],
    "I was born in 92000, and this is falsé.": [
        *(8, 21, 84, 55, 24, 19, 7, 0, 602, 347, 347, 347, 3),
        *(12, 66, 46, 72, 80, 6, 0, 4),
    ],
}
NON_LEGACY_VALUES = {
    ". Hello": [7, 4, 156, 86, 20],
    "       . Hello": [7, 4, 156, 86, 20],
    "": [],
    " ": [],
    "\u2581": [],
    "\u2581He is not": [156, 46, 44],
    "\u2581He is not<extra_id_0>             \u2581He": [156, 46, 44, 1001, 156],
    "\u2581He is not             \u2581He": [156, 46, 44, 156],
    "Hey <extra_id_0>I": [156, 30, 1001, 100],
    "Hello, <extra_id_0>,": [156, 86, 20, 3, 1001, 3],
    " <extra_id_0> ,": [1001, 7, 3],
    "No <extra_id_0> He": [284, 1001, 156],
}


def test_the_values_transformers_own_tests_write(tmp_path: Path) -> None:
    legacy = load_tokenizer(_assemble("test_sentencepiece--T5Tokenizer--bare", tmp_path))
    for text, ids in LEGACY_VALUES.items():
        assert legacy.encode(text) == ids, text
    non_legacy = load_tokenizer(_assemble("test_sentencepiece--T5Tokenizer--legacy-false-saved", tmp_path))
    assert "legacy: false" in non_legacy.description
    for text, ids in NON_LEGACY_VALUES.items():
        assert non_legacy.encode(text) == ids, text
    # test_special_tokens_strip adds bos_token "<bos>" after "<pad>" took 1000, so there it is 1001;
    # named in the config it comes first (bos before pad), as transformers 4.57 gives it too
    with_bos = load_tokenizer(
        _assemble("test_sentencepiece--T5Tokenizer--extra-ids-0", tmp_path, bos_token="<bos>")
    )
    assert with_bos.encode("No <bos> He") == [284, 1000, 156] and with_bos.token_to_id("<pad>") == 1001
    # test_get_vocab: "<pad>" is not a piece, so it comes after the 100 <extra_id_N>: 1101 ids
    assert legacy.token_to_id("<pad>") == 1100 and legacy.vocab_size == 1101


def test_the_four_settings_the_tokenizer_issue_names(tmp_path: Path) -> None:
    split = load_tokenizer(_assemble("test_sentencepiece--T5Tokenizer--split-special-tokens", tmp_path))
    assert split.encode("</s>") == [7, 0, 6, 0]
    stripping = load_tokenizer(_assemble("test_sentencepiece--T5Tokenizer--strip-tokens", tmp_path))
    assert stripping.token_to_id("  ") is not None
    assert stripping.encode("a  <extra_id_5>  b") == [10, 1094, 84]
    no_pad = load_tokenizer(_assemble("test_sentencepiece--T5Tokenizer--extra-ids-0", tmp_path))
    assert no_pad.token_to_id("<pad>") == 1000
    no_bos = load_tokenizer(_assemble("test_sentencepiece_no_bos--LlamaTokenizer--bare", tmp_path))
    assert no_bos.token_to_id("<s>") == 1000 and no_bos.encode("<s>x") == [1000, *no_bos.encode("x")]


@pytest.mark.parametrize(
    ("name", "change", "expected"),
    [
        ("test_sentencepiece--T5Tokenizer--saved", {"extra_ids": 5}, "extra_ids is 5"),
        ("test_sentencepiece--LlamaTokenizer--legacy-false", {"unk_token": None}, "no unk_token"),
        ("test_sentencepiece--T5Tokenizer--bare", {"sp_model_kwargs": {"alpha": 0.1}}, "sp_model_kwargs"),
    ],
)
def test_what_cannot_be_reproduced_is_refused_in_one_line(
    name: str, change: dict, expected: str, tmp_path: Path
) -> None:
    directory = _assemble(name, tmp_path, **change)
    with pytest.raises(TokenizerError) as refused:
        load_tokenizer(directory)
    message = str(refused.value)
    assert expected in message and str(directory / "tokenizer_config.json") in message
    assert name.split("--")[1] in message and "\n" not in message
