"""Run the engine with fp16 activations, as FT's fp16 model stores them between operations.

FT's GPT-NeoX in fp16 keeps every intermediate tensor (LayerNorm outputs, QKV, attention context,
MLP activations, the residual stream, logits) in fp16, while its GEMMs accumulate in fp32. A model
whose activations exceed fp16's range (65504) turns into inf/nan inside FT and answers garbage
without an error (a known FasterTransformer report: Pythia in fp16). `Fp16Activations` rounds each
intermediate to fp16 the same way and records the largest magnitude per layer, so `ftprefix
verify` can flag such a model before anyone rents a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FP16_MAX = float(torch.finfo(torch.float16).max)
EMBEDDINGS = -1  # the layer index used for the embedding lookup; the final LayerNorm and logits use num_layer


@dataclass
class Fp16Activations:
    """Called on every intermediate tensor with the layer it belongs to; returns it rounded to fp16."""

    largest: dict[int, float] = field(default_factory=dict)  # before rounding
    non_finite: set[int] = field(default_factory=set)  # layers where a value became inf or nan

    def __call__(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        finite = x[torch.isfinite(x)]
        if finite.numel():
            self.largest[layer] = max(self.largest.get(layer, 0.0), float(finite.abs().max()))
        rounded = x.to(torch.float16).to(x.dtype)
        if not bool(torch.isfinite(rounded).all()):
            self.non_finite.add(layer)
        return rounded

    @property
    def overflowed(self) -> bool:
        return bool(self.non_finite)
