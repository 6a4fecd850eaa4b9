"""Refuse numbers FasterTransformer cannot serve: inf/nan, and values that overflow fp16.

A prefix cast to fp16 with values beyond 65504 becomes inf; FT then answers garbage without any
error (and numpy only warns). So every tensor is checked where it is cast, before it is written.
"""

from __future__ import annotations

import numpy as np

from ftprefix.errors import UserError

FP16_MAX = float(np.finfo(np.float16).max)


def largest_finite(x: np.ndarray) -> float:
    finite = np.abs(x[np.isfinite(x)]) if x.size else x
    return float(finite.max()) if finite.size else 0.0


def check_servable(source: np.ndarray, what: str, dtype: str, cast: np.ndarray | None = None) -> None:
    """UserError naming `what` unless every value of `source` is finite and, for fp16, in range.

    `cast`: `source` already cast to the weight dtype, to test instead of casting again."""
    if cast is None:
        with np.errstate(over="ignore", invalid="ignore"):
            cast = source.astype(np.float16) if dtype == "fp16" else source
    if np.isfinite(cast).all():
        return
    largest = largest_finite(np.asarray(source, dtype=np.float32))
    if not np.isfinite(source).all():
        raise UserError(
            f"{what} holds inf or nan (largest finite |value| {largest:.6g}); FasterTransformer cannot "
            "serve it: fix the checkpoint"
        )
    raise UserError(
        f"{what} holds values up to {largest:.6g}, beyond fp16's {FP16_MAX:g}: convert with --dtype fp32 "
        "(or scale the checkpoint down)"
    )
