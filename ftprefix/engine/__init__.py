"""CPU/PyTorch reference engine with FasterTransformer's GPT-NeoX semantics.

`Engine` is imported lazily so that the torch-free `api` module of this package can be
used by clients without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftprefix.engine.api import GenerationRequest, GenerationResult

if TYPE_CHECKING:
    from ftprefix.engine.engine import Engine

__all__ = ["Engine", "GenerationRequest", "GenerationResult"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from ftprefix.engine.engine import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
