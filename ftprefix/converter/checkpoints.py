"""Readers for prefix / prompt checkpoints -> one canonical float32 tensor per task.

Canonical forms (see docs/design.md, "Checkpoint formats"):
- kind "prefix": [P, layers*2*hidden], last axis ordered (layer, key/value, head, head_dim). That is
  the order rinna's PrefixEncoder and PEFT's prefix tuning view it in before handing it to the model
  as past_key_values (rinnakk/prefix-tuning-gpt src/model/prompt/prefix_tuning.py: view
  [B, P, n_layer*2, n_head, head_dim] then permute/split(2) into per-layer (key, value)).
- kind "soft_prompt": [P, hidden], input embeddings prepended to the prompt (prompt tuning).

Formats:
- rinna prefix-tuning-gpt `.checkpoint`: `torch.save(prefix_mlp(prefix_wte.weight))`, i.e. a tensor
  [P, n_layer*2*n_embd] with the MLP applied (rinnakk/prefix-tuning-gpt src/prefix_tuning_example.py).
  A PrefixEncoder state dict (prefix_wte + prefix_mlp.0/.2, as used to resume training) is also read:
  the MLP (Linear, Tanh, Linear) is applied here.
- PEFT adapter directory: adapter_config.json + adapter_model.safetensors|bin, key
  `prompt_embeddings`; PREFIX_TUNING -> prefix (saved with any projection already applied),
  PROMPT_TUNING / P_TUNING -> soft prompt (huggingface/peft src/peft/utils/save_and_load.py).
- A plain tensor in .pt/.pth/.bin/.checkpoint/.safetensors/.npy: a prefix, or a soft prompt when
  its last axis is the model's hidden size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ftprefix import model_dirs
from ftprefix.converter.safetensors_file import SafetensorsFile
from ftprefix.converter.torch_files import to_numpy, torch_load
from ftprefix.errors import UserError

RINNA_MARKER = "_prefix_encoder"
RINNA_PUBLISHED = re.compile(r"^(.+)\.task\d+\.weight$")
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_KEY = "prompt_embeddings"
PEFT_PREFIX_TYPES = ("PREFIX_TUNING",)
PEFT_SOFT_PROMPT_TYPES = ("PROMPT_TUNING", "P_TUNING")

Kind = Literal["prefix", "soft_prompt"]


@dataclass(frozen=True)
class PrefixSource:
    """One task's checkpoint: a file or a PEFT adapter directory, and the task name to give it."""

    name: str
    path: Path

    @classmethod
    def at(cls, path: str | Path, name: str | None = None) -> PrefixSource:
        """`name` defaults to the file's (rinna: up to `_prefix_encoder`) or the directory's name."""
        path = Path(path)
        return cls(task_name_from_path(path) if name is None else name, path)

    def check_exists(self) -> None:
        """Refuse a checkpoint that is not there, before its task name is judged (named by its
        path alone, a missing file's task is named after the file)."""
        if not self.path.exists():
            hint = model_dirs.download_hint(self.path)
            raise UserError(f"task {self.name}: checkpoint {self.path} does not exist{hint}")


@dataclass
class LoadedCheckpoint:
    name: str
    kind: Kind
    tensor: np.ndarray  # float32; "prefix": [P, layers*2*hidden]; "soft_prompt": [P, hidden]
    path: Path
    # What the file itself declares about the model it was trained for (PEFT adapters do), so a
    # mismatch can be reported in the file's own terms: keys num_layers, num_attention_heads, token_dim.
    declared: Mapping[str, int] | None = None


def task_name_from_path(path: Path) -> str:
    """rinna's training checkpoints: the file name up to the first `_prefix_encoder`; rinna's published
    prefixes (`smileface_suffix.task0.weight`): the name before `.task<N>.weight`, as FasterTransformer's
    jp converter names the task; otherwise the stem or directory name."""
    name = path.name
    if RINNA_MARKER in name:
        return name.split(RINNA_MARKER, 1)[0]
    published = RINNA_PUBLISHED.match(name)
    if published and not path.is_dir():
        return published.group(1)
    return name if path.is_dir() else path.stem


def load_checkpoint(
    source: PrefixSource, *, trust_pickle: bool = False, hidden_size: int | None = None
) -> LoadedCheckpoint:
    """Read one checkpoint into its canonical float32 tensor.

    `hidden_size` (the base model's) tells a plain [P, hidden] soft prompt from a prefix; without
    it a plain tensor is taken as a prefix.
    """
    path = source.path
    source.check_exists()
    if path.is_dir():
        return _load_peft_dir(source, trust_pickle=trust_pickle)
    obj = _load_file(path, trust_pickle=trust_pickle)
    tensor, kind_hint = _tensor_from_object(obj, source)
    if kind_hint is None:
        is_soft = hidden_size is not None and tensor.ndim == 2 and tensor.shape[-1] == hidden_size
        rinna = RINNA_MARKER in path.name or RINNA_PUBLISHED.match(path.name) is not None
        kind_hint = "soft_prompt" if is_soft and not rinna else "prefix"
    return LoadedCheckpoint(source.name, kind_hint, _as_rows(tensor, source), path)


def _load_file(path: Path, *, trust_pickle: bool) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        st = SafetensorsFile(path)
        return {name: np.array(st.read(name)) for name in st.names()}
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise UserError(f"{path} is not a plain numpy array file: {exc}") from None
    return torch_load(path, trust_pickle=trust_pickle)


def _tensor_from_object(obj: Any, source: PrefixSource) -> tuple[np.ndarray, Kind | None]:
    if isinstance(obj, np.ndarray):
        return obj, None
    if _is_torch_tensor(obj):
        return to_numpy(obj), None
    if isinstance(obj, Mapping):
        return _tensor_from_mapping(obj, source)
    raise UserError(
        f"task {source.name}: {source.path} holds a {type(obj).__name__}, not a tensor or a state dict"
    )


def _tensor_from_mapping(state: Mapping[str, Any], source: PrefixSource) -> tuple[np.ndarray, Kind | None]:
    # Training checkpoints nest the weights, e.g. {"model": state_dict}; DDP adds "module.".
    if "model" in state and isinstance(state["model"], Mapping):
        return _tensor_from_mapping(state["model"], source)
    arrays = {k.removeprefix("module."): _array(v) for k, v in state.items() if _is_array(v)}
    if "prefix_wte.weight" in arrays:
        return _apply_rinna_encoder(arrays, source), "prefix"
    keys = [k for k in arrays if k == PEFT_KEY or k.endswith("." + PEFT_KEY)]
    if len(keys) == 1:
        return arrays[keys[0]], None
    if len(arrays) == 1:
        return next(iter(arrays.values())), None
    found = ", ".join(sorted(arrays)[:5]) or "no tensors"
    raise UserError(
        f"task {source.name}: cannot tell which tensor in {source.path} is the prefix "
        f"(found {found}); save the prefix tensor alone or under the key {PEFT_KEY!r}"
    )


def _apply_rinna_encoder(arrays: Mapping[str, np.ndarray], source: PrefixSource) -> np.ndarray:
    """rinna PrefixEncoder: prefix_mlp = Sequential(Linear, Tanh, Linear) over prefix_wte.weight."""
    needed = ("prefix_mlp.0.weight", "prefix_mlp.0.bias", "prefix_mlp.2.weight", "prefix_mlp.2.bias")
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise UserError(
            f"task {source.name}: {source.path} is a prefix-encoder state dict without {missing[0]}"
        )
    f32 = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
    hidden = np.tanh(f32["prefix_wte.weight"] @ f32["prefix_mlp.0.weight"].T + f32["prefix_mlp.0.bias"])
    return hidden @ f32["prefix_mlp.2.weight"].T + f32["prefix_mlp.2.bias"]


def _load_peft_dir(source: PrefixSource, *, trust_pickle: bool) -> LoadedCheckpoint:
    path = source.path
    config_path = path / PEFT_CONFIG
    if not config_path.is_file():
        raise UserError(f"task {source.name}: directory {path} is not a PEFT adapter (no {PEFT_CONFIG})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"task {source.name}: {config_path} is not valid JSON: {exc}") from None
    peft_type = str(config.get("peft_type", ""))
    if peft_type in PEFT_PREFIX_TYPES:
        kind: Kind = "prefix"
    elif peft_type in PEFT_SOFT_PROMPT_TYPES:
        kind = "soft_prompt"
    else:
        supported = ", ".join(PEFT_PREFIX_TYPES + PEFT_SOFT_PROMPT_TYPES)
        raise UserError(
            f"task {source.name}: PEFT adapter type {peft_type or 'unknown'} is not one of {supported}"
        )
    weights = next((path / w for w in PEFT_WEIGHTS if (path / w).is_file()), None)
    if weights is None:
        raise UserError(f"task {source.name}: {path} has no {' or '.join(PEFT_WEIGHTS)}")
    obj = _load_file(weights, trust_pickle=trust_pickle)
    if not isinstance(obj, Mapping):
        raise UserError(f"task {source.name}: {weights} is not a state dict")
    keys = [k for k in obj if k == PEFT_KEY or k.endswith("." + PEFT_KEY)]
    if len(keys) != 1:
        raise UserError(f"task {source.name}: {weights} has no {PEFT_KEY!r} tensor")
    tensor = _array(obj[keys[0]])
    declared = {
        k: int(config[k])
        for k in ("num_layers", "num_attention_heads", "token_dim")
        if isinstance(config.get(k), int)
    }
    submodules = config.get("num_transformer_submodules") or 1
    if submodules != 1:
        raise UserError(
            f"task {source.name}: PEFT adapter has num_transformer_submodules={submodules}; "
            "only decoder-only (CAUSAL_LM) adapters apply to GPT-NeoX"
        )
    return LoadedCheckpoint(source.name, kind, _as_rows(tensor, source), path, declared or None)


def _as_rows(tensor: np.ndarray, source: PrefixSource) -> np.ndarray:
    """Float32, one row per virtual token: [P, ...] -> [P, prod(...)]; 1-D stays 1-D (the caller
    splits it into whole tokens once it knows the model's width)."""
    if not np.issubdtype(tensor.dtype, np.floating):
        raise UserError(f"task {source.name}: {source.path} holds {tensor.dtype} values, expected floats")
    x = np.asarray(tensor, dtype=np.float32)
    if x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    if x.size == 0:
        raise UserError(f"task {source.name}: {source.path} holds an empty tensor")
    return np.ascontiguousarray(x)


def _is_torch_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def _is_array(obj: Any) -> bool:
    return isinstance(obj, np.ndarray) or _is_torch_tensor(obj)


def _array(obj: Any) -> np.ndarray:
    return obj if isinstance(obj, np.ndarray) else to_numpy(obj)
