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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", type=Path, help="directory of tokenizer directories (each with texts.json)")
    parser.add_argument(
        "--train-llama", type=Path, metavar="DIR", help="train the Llama-style model into DIR first"
    )
    args = parser.parse_args()
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
