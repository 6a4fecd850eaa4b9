"""Record what Hugging Face's slow SentencePiece tokenizers answer, for the tokenizer tests.

transformers 5.x cannot load these tokenizers next to tritonclient (protobuf), so the answers are
recorded once in a separate virtual environment with transformers 4.x and committed:

    python3 -m venv /tmp/hf4 && /tmp/hf4/bin/pip install transformers==4.57.6 sentencepiece protobuf
    /tmp/hf4/bin/python tools/record_tokenizer_answers.py tests/data/tokenizers

For every directory under the target that holds a `texts.json` (a list of strings) and a
tokenizer, it writes `golden.json` (the layout of the rinna-style data: per text `ids` =
`encode(text, add_special_tokens=False)`, `decode` and `decode_skip_special`) and
`continuations.json` (per prompt and random "generated" ids: `decode(prompt + generated,
skip_special_tokens=True)` and `decode(prompt, skip_special_tokens=True)`). `--train-llama DIR`
first trains the Llama-style byte-fallback BPE model the tests use into DIR, on every texts.json
under the target.

`--hf-fixtures MODELS` builds tokenizer directories from transformers' own SentencePiece test
fixtures (`../shared/tokenizers/hf-test-fixtures`) the way transformers' T5 and Llama tests build
them: every model with T5Tokenizer and LlamaTokenizer, in each setting of FIXTURE_SETTINGS, either
a bare `tokenizer_config.json` naming the class (as rinna's models ship) or what `save_pretrained`
writes. Into `TARGET/hf-fixtures/<model>--<class>--<setting>/` go the JSON files (the model stays
in ../shared) and `answers.json`: per text of `hf-fixtures/texts.json` the ids of
`encode(text, add_special_tokens=False)` and the `decode(ids, skip_special_tokens=True)` of
those ids, random id lists (special and added ids among them) with their decodes, and
prompts (a text's ids) continued by an id list with the decode of the whole.

    /tmp/hf4/bin/python tools/record_tokenizer_answers.py tests/data/tokenizers \
        --hf-fixtures ../shared/tokenizers/hf-test-fixtures

`--trie-splits` records `trie-splits.json`: where transformers' Trie cuts random texts at random
added tokens, mostly where that is not a leftmost-longest match.

`--fuzz N` then compares ftprefix.text with transformers on N random texts per directory (texts
built from each tokenizer's pieces, added tokens and whitespace) and prints every difference;
it needs this repository on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CONTINUATIONS_PER_PROMPT = 3


def train_llama_style(directory: Path, sentences: list[str]) -> None:
    """A small byte-fallback BPE model saved as `tokenizer.model` with a LlamaTokenizer config."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 4),
        model_writer=model,
        model_type="bpe",
        vocab_size=1000,
        byte_fallback=True,
        character_coverage=0.98,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=["<NL>"],
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")


def record(directory: Path) -> None:
    from transformers import AutoTokenizer

    texts = json.loads((directory / "texts.json").read_text(encoding="utf-8"))
    tok = AutoTokenizer.from_pretrained(str(directory), use_fast=False)
    rows = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        rows.append(
            {
                "text": text,
                "ids": ids,
                "decode": tok.decode(ids),
                "decode_skip_special": tok.decode(ids, skip_special_tokens=True),
            }
        )
    import transformers

    oracle = (
        f"transformers {transformers.__version__} {type(tok).__name__} (use_fast=False, legacy={tok.legacy})"
    )
    golden = {"oracle": oracle, "encode": "encode(text, add_special_tokens=False)", "rows": rows}
    (directory / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n", "utf-8")

    # "generated" ids: ordinary pieces, word-boundary pieces, special tokens and byte pieces, so
    # every rule of decode meets the prompt boundary
    rng = random.Random(0)
    vocab = tok.vocab_size
    specials = [i for i in tok.all_special_ids if i < vocab]
    underline = [i for i in range(vocab) if tok.convert_ids_to_tokens(i).startswith("\u2581")]
    pool = list(range(vocab))
    continuations = []
    for row in rows:
        if not row["ids"]:
            continue
        for _ in range(CONTINUATIONS_PER_PROMPT):
            generated = [
                rng.choice(rng.choice([pool, pool, underline, specials or pool]))
                for _ in range(rng.randint(1, 8))
            ]
            continuations.append(
                {
                    "prompt_ids": row["ids"],
                    "generated_ids": generated,
                    "decode_prompt": tok.decode(row["ids"], skip_special_tokens=True),
                    "decode_all": tok.decode(row["ids"] + generated, skip_special_tokens=True),
                }
            )
    out = {"oracle": oracle, "continuations": continuations}
    (directory / "continuations.json").write_text(
        json.dumps(out, ensure_ascii=False, indent=1) + "\n", "utf-8"
    )
    print(f"{directory}: {len(rows)} texts, {len(continuations)} continuations ({oracle})")


# (setting, classes it applies to): how each fixture directory is made (see build_fixture_directory)
FIXTURE_SETTINGS = (
    ("bare", ("T5Tokenizer", "LlamaTokenizer")),
    ("saved", ("T5Tokenizer", "LlamaTokenizer")),
    ("split-special-tokens", ("T5Tokenizer", "LlamaTokenizer")),
    ("strip-tokens", ("T5Tokenizer", "LlamaTokenizer")),
    ("legacy-false", ("T5Tokenizer", "LlamaTokenizer")),
    ("legacy-false-saved", ("T5Tokenizer", "LlamaTokenizer")),
    ("legacy-false-no-prefix-space", ("T5Tokenizer", "LlamaTokenizer")),
    ("specials-not-in-model", ("T5Tokenizer", "LlamaTokenizer")),
    ("extra-ids-0", ("T5Tokenizer",)),
)
MODEL_FILES = {"T5Tokenizer": "spiece.model", "LlamaTokenizer": "tokenizer.model"}
IDS_LISTS = 40
CONTINUATIONS = 30


def build_fixture_directory(model: Path, class_name: str, setting: str, directory: Path) -> None:
    """A tokenizer directory as transformers' tests make one (model file included)."""
    import shutil

    import transformers
    from transformers import AddedToken

    cls = getattr(transformers, class_name)
    directory.mkdir(parents=True, exist_ok=True)
    bare: dict = {"tokenizer_class": class_name}
    if setting in ("saved", "strip-tokens", "legacy-false-saved"):
        if setting == "legacy-false-saved":
            # transformers' CommonSpmIntegrationTests (tests/models/t5/test_tokenization_t5.py)
            kwargs = {"extra_ids": 0} if class_name == "T5Tokenizer" else {}
            tok = cls(str(model), legacy=False, **kwargs)
            tok.add_special_tokens(
                {"additional_special_tokens": [AddedToken("<extra_id_0>", rstrip=False, lstrip=False)]}
            )
        else:
            tok = cls(str(model))
        if setting == "strip-tokens":
            tok.add_tokens(
                [
                    AddedToken("  ", lstrip=False, rstrip=False),
                    AddedToken(" mid ", lstrip=True, rstrip=True),
                    AddedToken("tail", lstrip=True),
                    AddedToken("<ws>", lstrip=True, rstrip=True),
                ]
            )
            tok.add_special_tokens(
                {
                    "additional_special_tokens": [
                        AddedToken("<special>", lstrip=True),
                        AddedToken("<r>", rstrip=True),
                    ]
                },
                replace_additional_special_tokens=False,
            )
        tok.save_pretrained(str(directory))
        return
    if setting == "split-special-tokens":
        bare["split_special_tokens"] = True
    elif setting == "legacy-false":
        bare["legacy"] = False
    elif setting == "legacy-false-no-prefix-space":
        bare.update(legacy=False, add_prefix_space=False)
    elif setting == "specials-not-in-model":
        bare.update(additional_special_tokens=["<new>", "</s>"], sep_token="<sep>", mask_token="<mask>")
    elif setting == "extra-ids-0":
        bare["extra_ids"] = 0
    (directory / "tokenizer_config.json").write_text(json.dumps(bare, indent=1) + "\n", encoding="utf-8")
    shutil.copyfile(model, directory / MODEL_FILES[class_name])


def record_fixture_directory(directory: Path, model_name: str, texts: list[str]) -> dict:
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(directory), use_fast=False)
    encoded = [tok.encode(text, add_special_tokens=False) for text in texts]
    rng = random.Random(directory.name)
    size = len(tok)
    specials = sorted(set(tok.all_special_ids))
    added = sorted(tok.added_tokens_decoder)
    underline = [i for i in range(tok.vocab_size) if tok.convert_ids_to_tokens(i).startswith("\u2581")]
    pools = [
        list(range(size)),
        list(range(size)),
        underline or list(range(size)),
        specials,
        added or specials,
    ]
    id_lists = [[rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 12))] for _ in range(IDS_LISTS)]
    prompts = [i for i, ids in enumerate(encoded) if ids]
    pairs = [(rng.choice(prompts), rng.randrange(IDS_LISTS)) for _ in range(CONTINUATIONS)]
    return {
        "model": model_name,
        "oracle": f"transformers {transformers.__version__} {type(tok).__name__} "
        f"(use_fast=False, legacy={tok.legacy})",
        "encode": encoded,
        "decode_encoded": [tok.decode(ids, skip_special_tokens=True) for ids in encoded],
        "decode": [[ids, tok.decode(ids, skip_special_tokens=True)] for ids in id_lists],
        # [text index, id list index, decode(that text's ids + the id list)]: a prompt continued
        "continuations": [
            [i, j, tok.decode(encoded[i] + id_lists[j], skip_special_tokens=True)] for i, j in pairs
        ],
    }


def fixture_directories(models: Path):
    for model in sorted(models.glob("*.model")):
        for setting, classes in FIXTURE_SETTINGS:
            for class_name in classes:
                yield model, class_name, setting, f"{model.stem}--{class_name}--{setting}"


def record_fixtures(models: Path, target: Path) -> None:
    import tempfile

    out = target / "hf-fixtures"
    texts = json.loads((out / "texts.json").read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as scratch:
        for model, class_name, setting, name in fixture_directories(models):
            built = Path(scratch) / name
            build_fixture_directory(model, class_name, setting, built)
            answers = record_fixture_directory(built, model.name, texts)
            kept = out / name
            kept.mkdir(parents=True, exist_ok=True)
            for path in sorted(built.glob("*.json")):
                (kept / path.name).write_bytes(path.read_bytes())
            (kept / "answers.json").write_text(json.dumps(answers, ensure_ascii=False) + "\n", "utf-8")
            print(f"{name}: {len(texts)} texts, {len(answers['decode'])} id lists")


def fuzz_fixtures(models: Path, rounds: int) -> int:
    """ftprefix.text against transformers on random texts; returns the number of differences."""
    import tempfile

    from transformers import AutoTokenizer

    from ftprefix.text import load_tokenizer

    differences = 0
    with tempfile.TemporaryDirectory() as scratch:
        for model, class_name, setting, name in fixture_directories(models):
            built = Path(scratch) / name
            build_fixture_directory(model, class_name, setting, built)
            hf = AutoTokenizer.from_pretrained(str(built), use_fast=False)
            ours = load_tokenizer(built)
            rng = random.Random(name)
            pieces = [hf.convert_ids_to_tokens(i) for i in range(hf.vocab_size)]
            fragments = [
                *(t.content for t in hf.added_tokens_decoder.values()),
                " ",
                "  ",
                "\t",
                "\n",
                "\u2581",
                "<",
                ">",
                "</",
                "s>",
                "é",
                "😀",
                "日本",
                "\u3000",
            ]
            for _ in range(rounds):
                parts = []
                for _ in range(rng.randint(1, 10)):
                    kind = rng.random()
                    if kind < 0.45:
                        parts.append(rng.choice(pieces).replace("\u2581", rng.choice([" ", "", "\u2581"])))
                    else:
                        parts.append(rng.choice(fragments))
                text = "".join(parts)
                want = hf.encode(text, add_special_tokens=False)
                got = ours.encode(text)
                if got != want:
                    differences += 1
                    print(f"{name} encode {text!r}: transformers {want}, ftprefix {got}")
                ids = [rng.randrange(len(hf)) for _ in range(rng.randint(1, 10))]
                for sample in (want, ids):
                    want_text = hf.decode(sample, skip_special_tokens=True)
                    got_text = ours.decode(sample)
                    if got_text != want_text:
                        differences += 1
                        print(f"{name} decode {sample}: transformers {want_text!r}, ftprefix {got_text!r}")
    print(f"{differences} differences")
    return differences


def record_trie_splits(target: Path, count: int = 400) -> None:
    """`trie-splits.json`: where transformers' Trie.split cuts random texts at random added tokens,
    mostly cases built to differ from a leftmost-longest regular expression (a long token with a
    shorter one inside it, the text a damaged copy of the long one)."""
    import re

    import transformers
    from transformers.tokenization_utils import Trie

    def trie_split(tokens: list[str], text: str) -> list[str]:
        trie = Trie()
        for token in tokens:
            trie.add(token)
        return trie.split(text)

    def regex_split(tokens: list[str], text: str) -> list[str]:
        pattern = re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))
        pieces, previous = [], 0
        for match in pattern.finditer(text):
            pieces += [text[previous : match.start()], match.group()]
            previous = match.end()
        return [p for p in [*pieces, text[previous:]] if p]

    rng = random.Random(29)
    alphabet = "abxy9"

    def noise(n: int) -> str:
        return "".join(rng.choice(alphabet + " Q") for _ in range(n))

    cases = [{"tokens": ["xyz9", "y"], "text": "xyQz9", "split": trie_split(["xyz9", "y"], "xyQz9")}]
    while len(cases) <= count:
        long = "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 6)))
        cut = rng.randint(1, len(long) - 2)
        short = long[cut : cut + rng.randint(1, len(long) - cut)]
        others = (
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(0, 2))
        )
        tokens = sorted({long, short, *others})
        damaged = list(long)
        damaged[rng.randrange(len(damaged))] = rng.choice(alphabet + "Q ")
        if rng.random() < 0.5:
            damaged.insert(rng.randrange(len(damaged) + 1), rng.choice(alphabet + "Q "))
        text = noise(rng.randint(0, 4)) + "".join(damaged) + noise(rng.randint(0, 4))
        split = trie_split(tokens, text)
        if split == regex_split(tokens, text) and rng.random() < 0.9:
            continue  # keep a few ordinary cases beside the unusual ones
        cases.append({"tokens": tokens, "text": text, "split": split})
    out = {"oracle": f"transformers {transformers.__version__} tokenization_utils.Trie.split", "cases": cases}
    (target / "trie-splits.json").write_text(json.dumps(out, ensure_ascii=False) + "\n", "utf-8")
    print(f"{target / 'trie-splits.json'}: {len(cases)} cases")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", type=Path, help="directory of tokenizer directories (each with texts.json)")
    parser.add_argument(
        "--train-llama", type=Path, metavar="DIR", help="train the Llama-style model into DIR first"
    )
    parser.add_argument(
        "--hf-fixtures",
        type=Path,
        metavar="MODELS",
        help="build and record the transformers fixture directories",
    )
    parser.add_argument(
        "--fuzz", type=int, default=0, metavar="N", help="with --hf-fixtures: N random texts each"
    )
    parser.add_argument(
        "--trie-splits",
        action="store_true",
        help="record where transformers' Trie cuts texts at added tokens",
    )
    args = parser.parse_args()
    if args.trie_splits:
        record_trie_splits(args.target)
        return
    if args.hf_fixtures is not None:
        if args.fuzz:
            raise SystemExit(1 if fuzz_fixtures(args.hf_fixtures, args.fuzz) else 0)
        record_fixtures(args.hf_fixtures, args.target)
        return
    if args.train_llama is not None:
        texts = [
            text
            for path in sorted(args.target.glob("*/texts.json"))
            for text in json.loads(path.read_text(encoding="utf-8"))
            if text.strip()
        ]
        train_llama_style(args.train_llama, texts)
    for directory in sorted(p.parent for p in args.target.glob("*/texts.json")):
        record(directory)


if __name__ == "__main__":
    main()
