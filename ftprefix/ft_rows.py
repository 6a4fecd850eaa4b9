"""Read one row of FasterTransformer's `output_ids` as FT writes it (numpy only, no tritonclient).

Row b's generated tokens start right after its own input_lengths[b] tokens; the rest of the row is
end_id (docs/design.md, "What FT returns"). The client (`client/wire.py`, which also cross-checks
`sequence_length`) and the ensemble's postprocessing model read rows with this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ftprefix.words import ends_with_stop_word

FinishReason = Literal["length", "end_id", "stop_words"]


@dataclass(frozen=True)
class RowSpec:
    """What the client asked for one row: enough to read its answer out of FT's tensors."""

    input_length: int
    max_new_tokens: int
    end_id: int | None
    stop_words: Sequence[Sequence[int]] = ()


@dataclass(frozen=True)
class RowAnswer:
    tokens: list[int]
    finish_reason: FinishReason | None  # None: the row has not finished yet (streaming)


def read_row(ids: np.ndarray, spec: RowSpec, final: bool) -> RowAnswer:
    """Row `ids` (output_ids[b, 0]) -> the generated tokens the caller asked for, and why they end.

    In a streamed (not final) response an end_id may be the fill after the tokens so far, so the
    row's end at an end_id is only taken from the final response. A stop word ends the row where
    its last token is (it may begin in the prompt, as FT compares the whole sequence).
    """
    start = spec.input_length
    window: list[int] = ids[start : start + spec.max_new_tokens].tolist()
    limit = len(window)
    if spec.end_id is not None and spec.end_id in window:
        limit = window.index(spec.end_id)
    stop = _first_stop(ids, start, window[:limit], spec.stop_words) if spec.stop_words else None
    if stop is not None:
        return RowAnswer(window[: stop + 1], "stop_words")
    if limit < len(window):  # an end_id
        return RowAnswer(window[: limit + 1], "end_id") if final else RowAnswer(window[:limit], None)
    if limit == spec.max_new_tokens:
        return RowAnswer(window, "length")
    return RowAnswer(window, None)


def _first_stop(
    ids: np.ndarray, start: int, generated: list[int], words: Sequence[Sequence[int]]
) -> int | None:
    """The first position in `generated` where one of `words` is complete, or None. Only the
    positions holding a word's last token are compared (`ends_with_stop_word`)."""
    words = [list(w) for w in words if len(w)]
    if not words:
        return None
    last_tokens = {w[-1] for w in words}
    longest = max(len(w) for w in words)
    for position, token in enumerate(generated):
        if token in last_tokens:
            end = start + position + 1
            if ends_with_stop_word(ids[max(0, end - longest) : end].tolist(), words):
                return position
    return None
