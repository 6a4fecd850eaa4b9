"""The text of a growing sequence of tokens (or pieces) at every step, without decoding it whole.

A stream asks for its text at every token with all of its tokens so far, so decoding the whole
sequence each time costs more the longer the prompt and the answer. Here the sequence is decoded
as a settled head, whose text is kept, and a tail, decoded again at every step:

- the tail is decoded after a sentinel, a token whose own text is then cut off, so that the tail
  decodes as it does after other text (a decoder drops a leading space at the start of a text
  only: SentencePiece, Metaspace, Llama's Strip);
- the head ends before a plain token (no byte piece, nothing that a later token completes or
  changes), so no later token reaches back into the head's text;
- every SETTLE_EVERY tokens the head moves up to the last plain token, after a check that head +
  tail is the whole sequence's text, decoded whole once. Should that check ever fail, the
  sequence is decoded whole from then on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")


class SettledText(Generic[Item]):
    """`text(items)`: the text of `items`, a list that only grows between calls (another list
    starts anew), or None where it must be decoded whole. `whole(items)` decodes whole,
    `after_sentinel(items)` gives what `items` add after other text (None: not known), and
    `plain(item)` says whether no later item changes the text before it."""

    SETTLE_EVERY = 64

    def __init__(
        self,
        whole: Callable[[list[Item]], str],
        after_sentinel: Callable[[list[Item]], str | None],
        plain: Callable[[Item], bool],
    ) -> None:
        self._whole, self._after_sentinel, self._plain = whole, after_sentinel, plain
        self._items: list[Item] | None = None  # the list the head belongs to
        self._head = 0  # how many of its items are settled
        self._head_text = ""
        self._settle_at = 0  # the length at which the head moves next
        self._whole_only = False

    def text(self, items: list[Item]) -> str | None:
        if self._whole_only:
            return None
        if items is not self._items or self._head > len(items):
            self._items, self._head, self._head_text = items, 0, ""
            self._settle_at = self.SETTLE_EVERY
        if len(items) >= self._settle_at:  # at most once per SETTLE_EVERY items, settled or not
            self._settle_at = len(items) + self.SETTLE_EVERY
            self._settle(items)
        if self._whole_only or self._head == 0:
            return None
        tail = self._after_sentinel(items[self._head :])
        return None if tail is None else self._head_text + tail

    def _settle(self, items: list[Item]) -> None:
        start = next((i for i in range(len(items) - 1, self._head, -1) if self._plain(items[i])), 0)
        if start == 0:
            return
        whole = self._whole(items)
        tail = self._after_sentinel(items[start:])
        if tail is None or not whole.endswith(tail):
            self._whole_only = True
            return
        self._head, self._head_text = start, whole[: len(whole) - len(tail)]


def cut_sentinel(decoded: str, sentinel_text: str) -> str | None:
    """What follows the sentinel's text in `decoded`, or None if it does not start with it."""
    return decoded[len(sentinel_text) :] if decoded.startswith(sentinel_text) else None


def new_ids(seen: list[int], ids: list[int]) -> list[int] | None:
    """The ids after `seen` where `ids` start with all of `seen` (a stream asking again, with more
    tokens), else None (fewer or other tokens: start anew)."""
    count = len(seen)
    return ids[count:] if len(ids) >= count and ids[:count] == seen else None


def int_list(ids: Sequence[int]) -> list[int]:
    """`ids` as a list of Python ints: as it is, or a row of FT's output tensor at C speed."""
    if isinstance(ids, list):
        return ids
    tolist = getattr(ids, "tolist", None)  # numpy's arrays
    return tolist() if tolist is not None else [int(i) for i in ids]
