"""Independent references for the rinna-style and Llama-style test tokenizers (no tests here).

`decode` follows Hugging Face's slow T5Tokenizer for the files in tests/data/tokenizers/
rinna-style-sentencepiece (special tokens are pieces of the model; no added tokens besides them),
and its slow LlamaTokenizer for llama-style-sentencepiece, written with the `sentencepiece` package
directly and separately from ftprefix.text. Each is held to the answers recorded from
transformers 4.57 (test_tokenizers.py), and then gives the expected text for ids the tests
generate, which nothing recorded beforehand.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import sentencepiece

DATA = Path(__file__).resolve().parent / "data" / "tokenizers"
RINNA = DATA / "rinna-style-sentencepiece"
LLAMA = DATA / "llama-style-sentencepiece"


class RinnaReference:
    def __init__(self, directory: Path = RINNA) -> None:
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(directory / "spiece.model"))
        specials = json.loads((directory / "special_tokens_map.json").read_text(encoding="utf-8"))
        self.special_ids = {self.sp.piece_to_id(token) for token in specials.values()}
        self.eos_id = self.sp.piece_to_id(specials["eos_token"])
        self.strip = True  # T5Tokenizer strips what it decodes

    def decode(self, ids: Sequence[int]) -> str:
        """`decode(ids, skip_special_tokens=True)`: specials dropped, the first piece's `▁` dropped,
        SentencePiece's own decoding, then stripped."""
        pieces = [self.sp.id_to_piece(int(i)) for i in ids if int(i) not in self.special_ids]
        if not pieces:
            return ""
        pieces[0] = pieces[0].removeprefix("\u2581")
        text = self.sp.decode(pieces)
        return text.strip() if self.strip else text

    def continuation(self, prompt: Sequence[int], generated: Sequence[int]) -> str:
        """What decode(prompt + generated) adds after decode(prompt)."""
        before, after = self.decode(prompt), self.decode([*prompt, *generated])
        assert after.startswith(before), (before, after)
        return after[len(before) :]


class LlamaReference(RinnaReference):
    """The same for the Llama-style test tokenizer (LlamaTokenizer, legacy, no added tokens, no
    clean-up of spaces; its model has byte pieces): its specials are the model's control and
    unknown pieces, and nothing is stripped."""

    def __init__(self, directory: Path = LLAMA) -> None:
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
        sp = self.sp
        self.special_ids = {i for i in range(sp.get_piece_size()) if sp.IsControl(i) or sp.IsUnknown(i)}
        self.eos_id = sp.eos_id()
        self.strip = False


def golden_rows(directory: Path) -> list[dict]:
    return json.loads((directory / "golden.json").read_text(encoding="utf-8"))["rows"]


def recorded_continuations(directory: Path) -> list[dict]:
    return json.loads((directory / "continuations.json").read_text(encoding="utf-8"))["continuations"]
