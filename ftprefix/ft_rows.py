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
    row's end at an end_id is only taken from the final response.
    """
    start = spec.input_length
    window = [int(t) for t in ids[start : start + spec.max_new_tokens]]
    history = [int(t) for t in ids[:start]]
    tokens: list[int] = []
    for token in window:
        if token == spec.end_id:
            if final:
                return RowAnswer([*tokens, token], "end_id")
            return RowAnswer(tokens, None)
        tokens.append(token)
        history.append(token)
        if ends_with_stop_word(history, spec.stop_words):
            return RowAnswer(tokens, "stop_words")
    if len(tokens) == spec.max_new_tokens:
        return RowAnswer(tokens, "length")
    return RowAnswer(tokens, None)
