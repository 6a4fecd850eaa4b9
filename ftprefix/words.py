"""FasterTransformer's stop_words_list / bad_words_list layout, [2, L] per row (numpy only).

The client builds its lists with it, so no torch here.

Row 0 holds the words' token ids back to back, row 1 the cumulative end offset of each word;
row 0 is padded with 0 and row 1 with -1 (FT: kernels/stop_criteria_kernels.cu and
kernels/ban_bad_words.cu read `offsets[i] < 0` as "no more words"; fastertransformer_backend's
tools/utils builds the same layout).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def words_to_ft(words: Sequence[Sequence[int]], length: int | None = None) -> np.ndarray:
    """Token sequences -> int32 [2, L] (L = total tokens, at least 1, or `length` if larger)."""
    flat = [int(t) for word in words for t in word]
    offsets = np.cumsum([len(word) for word in words], dtype=np.int64).tolist()
    size = max(len(flat), 1, length or 0)
    out = np.zeros((2, size), dtype=np.int32)
    out[1, :] = -1
    out[0, : len(flat)] = flat
    out[1, : len(offsets)] = offsets
    return out


def words_from_ft(array: np.ndarray) -> list[list[int]]:
    """int [2, L] -> token sequences; raises ValueError for a malformed list."""
    arr = np.asarray(array)
    if arr.ndim != 2 or arr.shape[0] != 2:
        raise ValueError(f"a words list must have shape [2, L], got {list(arr.shape)}")
    ids, offsets = arr[0].tolist(), arr[1].tolist()
    words: list[list[int]] = []
    start = 0
    for end in offsets:
        if end < 0:
            break
        if end <= start or end > len(ids):
            raise ValueError(f"words list offsets must increase and stay within {len(ids)}, got {offsets}")
        words.append([int(t) for t in ids[start:end]])
        start = end
    return words


def batch_words_to_ft(rows: Sequence[Sequence[Sequence[int]]]) -> np.ndarray:
    """Per-row word lists -> int32 [batch, 2, L] with a common L (as the FT backend expects)."""
    length = max([sum(len(w) for w in words) for words in rows] + [1])
    return np.stack([words_to_ft(words, length) for words in rows]) if rows else np.zeros((0, 2, 1), np.int32)


def ends_with_stop_word(history: Sequence[int], words: Sequence[Sequence[int]]) -> bool:
    """FT's stop criterion: the row's tokens so far end with one of the stop words."""
    return any(w and len(history) >= len(w) and list(history[-len(w) :]) == list(w) for w in words)
