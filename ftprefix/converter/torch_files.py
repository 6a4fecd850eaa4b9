"""Loading torch pickle files (`*.bin`, `*.pt`, `*.checkpoint`) without running untrusted code."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ftprefix.errors import UserError

TRUST_PICKLE_FLAG = "--trust-pickle"


def torch_load(path: Path, *, trust_pickle: bool = False, mmap: bool = False) -> Any:
    """`torch.load` on CPU; only plain tensors and containers unless `trust_pickle`.

    `weights_only=True` refuses any pickle that would construct arbitrary objects (run code); that
    refusal becomes a UserError naming the flag that opts in.
    """
    import torch

    _check_looks_like_torch(path)
    kwargs: dict[str, Any] = {"map_location": "cpu", "weights_only": not trust_pickle}
    try:
        try:
            return torch.load(path, mmap=mmap, **kwargs)
        except RuntimeError as exc:
            # Files in torch's legacy (pre-zip) format cannot be memory-mapped; load them whole.
            if mmap and "mmap" in str(exc):
                return torch.load(path, **kwargs)
            raise
    except pickle.UnpicklingError as exc:
        if trust_pickle:
            raise UserError(f"{path} is not a readable torch file: {_first_line(exc)}") from None
        raise UserError(
            f"{path} is a pickle that needs code execution to load ({_first_line(exc)}); "
            f"pass {TRUST_PICKLE_FLAG} if you trust where it came from"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable torch file: {_first_line(exc)}") from None


def _check_looks_like_torch(path: Path) -> None:
    """torch.save writes a zip archive (torch >= 1.6) or a protocol-2 pickle (before); anything
    else, such as a config.json given by mistake, would otherwise be reported as a pickle that needs
    code execution, with --trust-pickle as the way out."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        return
    what = "is empty" if not head else f"starts with {head!r}"
    raise UserError(
        f"{path} is not a torch file (torch.save writes a zip archive or a pickle; this file {what})"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def to_numpy(tensor: Any) -> Any:
    """torch tensor -> numpy array without a copy where possible (bf16 has no numpy twin: fp32)."""
    import torch

    t = tensor.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()
