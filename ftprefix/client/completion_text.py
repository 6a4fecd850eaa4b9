"""A row's text: what the prompt continues with, cut at the first stop string, streamed in whole characters.

FT stops on token sequences; a stop string can also appear in the text where the model produced it
with other tokens (SentencePiece gives a word its own `▁` only at the start of a text), so the
text is cut at the first stop string wherever it appears, as OpenAI's `stop` promises, and the
tokens are cut where the text reached it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ftprefix.text import Tokenizer


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string in `text` starts, or None."""
    if not stops:  # most requests, at every streamed token
        return None
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to its first stop string, and whether one was found (for text without token ids)."""
    at = first_stop(text, stops)
    return (text, False) if at is None else (text[:at], True)


def held_back(text: str, strings: Sequence[str]) -> int:
    """How many trailing characters of `text` could still grow into one of `strings`."""
    held = 0
    for s in strings:
        for k in range(min(len(s), len(text)), held, -1):
            if text.endswith(s[:k]):
                held = k
                break
    return held


@dataclass(frozen=True)
class RowText:
    text: str
    tokens: list[int]  # the generated tokens that text comes from (cut with it at a stop string)
    stopped: bool  # a stop string ended it


class TextReader:
    """Turns a row's generated tokens into its text, given the row's prompt ids."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], stops: Sequence[str]) -> None:
        self.continuation = tokenizer.continuing(prompt_ids)
        self.stops = [s for s in stops if s]
        # never show a piece of the newline token before it is whole: it becomes "\n"
        self.pending = [*self.stops, *([tokenizer.newline_token] if tokenizer.newline_token else [])]

    def read(self, tokens: Sequence[int]) -> RowText:
        """The text of `tokens`, cut at the first stop string."""
        tokens = list(tokens)
        text = self.continuation.text(tokens)
        at = first_stop(text, self.stops)
        if at is None:
            return RowText(text, tokens, False)
        return RowText(text[:at], tokens[: self._tokens_reaching(tokens, at)], True)

    def visible(self, tokens: Sequence[int]) -> RowText:
        """What a stream may show of unfinished `tokens`: no half character, nothing that may still
        become a stop string or the newline token."""
        row = self.read(tokens)
        if row.stopped:
            return row
        text = row.text.rstrip("\ufffd")  # a character whose bytes have not all arrived
        return RowText(text[: len(text) - held_back(text, self.pending)], row.tokens, False)

    def token_texts(self, tokens: Sequence[int], text: str) -> list[str]:
        """The text each token adds (a token that completes a character carries it); concatenated,
        `text`. One decode per token: asked for with log probabilities only."""
        pieces, shown = [], ""
        for k in range(1, len(tokens) + 1):
            so_far = self.continuation.text(tokens[:k]).rstrip("\ufffd")[: len(text)]
            piece = so_far[len(shown) :] if so_far.startswith(shown) else ""
            pieces.append(piece)
            shown += piece
        if shown != text and pieces:  # whatever the last token completes
            pieces[-1] += text[len(shown) :]
        return pieces

    def _tokens_reaching(self, tokens: list[int], at: int) -> int:
        """The fewest leading tokens whose text holds the stop string that starts at `at`."""
        low, high = 1, len(tokens)
        while low < high:
            mid = (low + high) // 2
            found = first_stop(self.continuation.text(tokens[:mid]), self.stops)
            if found is not None and found <= at:
                high = mid
            else:
                low = mid + 1
        return high
