"""The Hugging Face calls whose spelling differs across the transformers versions ftprefix supports.

Supported: transformers 4.40 to 5.24 (pyproject.toml; both ends tested). Between them the KV cache
argument and output field were renamed from `past_key_values` to `cache` (5.x warns, announcing
removal, on the old name; 4.x knows only the old one), and `from_pretrained`'s `torch_dtype` became
`dtype`. Every caller in ftprefix (verify, the soft-prompt conversion, the demo's training, the
benchmarks) goes through these, so a transformers upgrade is met here once.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

DTYPE_SINCE = "4.56"  # from_pretrained's `dtype` (before: `torch_dtype`)


def cache_argument(model: Any, cache: Any) -> dict[str, Any]:
    """`{name: cache}` for `model(...)` and `model.generate(...)`: `cache` where the model's forward
    takes it, `past_key_values` before."""
    parameters = inspect.signature(type(model).forward).parameters
    return {"cache" if "cache" in parameters else "past_key_values": cache}


def returned_cache(output: Any) -> Any:
    """The KV cache a forward pass with use_cache=True returned, under either field name."""
    return output["cache"] if "cache" in output else output["past_key_values"]


def load_gptneox(hf_dir: str | Path, **kwargs: Any) -> Any:
    """`GPTNeoXForCausalLM.from_pretrained` in float32 (the dtype every reference runs in), eval mode."""
    import torch
    import transformers
    from packaging.version import Version
    from transformers import GPTNeoXForCausalLM

    # both go through **kwargs: `dtype` since 4.56 (`torch_dtype` deprecated), `torch_dtype` before
    name = "dtype" if Version(transformers.__version__) >= Version(DTYPE_SINCE) else "torch_dtype"
    return GPTNeoXForCausalLM.from_pretrained(str(hf_dir), **{name: torch.float32}, **kwargs).eval()
