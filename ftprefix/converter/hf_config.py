"""A Hugging Face GPT-NeoX `config.json` -> what FasterTransformer needs, refusing what FT cannot run.

Both config styles are read: the older `rotary_pct` / `rotary_emb_base` (/ `rope_scaling`) keys and
the newer `rope_parameters` dict (`rope_type`, `rope_theta`, `partial_rotary_factor`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ftprefix import layout, model_dirs
from ftprefix.errors import UserError

# Hugging Face activation name -> the GELU formula it computes. FT computes the tanh form
# (gelu kernel in src/fastertransformer/kernels/activation_kernels.cu).
GELU_FORMULA: dict[str, Literal["tanh", "erf"]] = {
    "gelu_new": "tanh",
    "gelu_fast": "tanh",
    "gelu_pytorch_tanh": "tanh",
    "gelu_accurate": "tanh",
    "gelu": "erf",
    "gelu_python": "erf",
}
DEFAULT_ROTARY_PCT = 0.25  # GPTNeoXConfig's default


@dataclass(frozen=True)
class NeoXConfig:
    hidden_size: int
    num_heads: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    rotary_pct: float
    use_parallel_residual: bool
    # False: the attention's two Linear layers have no bias (GPTNeoXConfig.attention_bias); FT
    # always adds one, so the converter writes zeros, which add nothing
    attention_bias: bool
    bos_token_id: int
    eos_token_id: int
    tie_word_embeddings: bool
    layer_norm_eps: float
    hidden_act: str

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    def warnings(self) -> list[str]:
        """Differences FT will not honour but that change results only slightly."""
        notes = []
        if not math.isclose(self.layer_norm_eps, layout.LAYERNORM_EPS, rel_tol=1e-9):
            notes.append(
                f"the model's layer_norm_eps is {self.layer_norm_eps:g}; FasterTransformer computes "
                f"GPT-NeoX LayerNorm with eps {layout.LAYERNORM_EPS:g}"
            )
        if GELU_FORMULA[self.hidden_act] == "erf":
            notes.append(
                f"the model's hidden_act is {self.hidden_act!r} (exact erf GELU); FasterTransformer "
                "computes GELU in its tanh form"
            )
        return notes

    def check_tp(self, tp: int) -> None:
        if tp not in layout.SUPPORTED_TP:
            raise UserError(
                f"--tp {tp} is not supported; use one of {', '.join(map(str, layout.SUPPORTED_TP))}"
            )
        if self.num_heads % tp:
            raise UserError(
                f"the model's {self.num_heads} attention heads do not divide by --tp {tp}; "
                "pick a tensor-parallel size that divides the head count"
            )
        if self.intermediate_size % tp:
            raise UserError(
                f"the model's intermediate_size {self.intermediate_size} does not divide by --tp {tp}"
            )

    def to_ft(
        self, *, tp: int, dtype: str, model_name: str, tasks: tuple[layout.Task, ...] = ()
    ) -> layout.ModelConfig:
        return layout.ModelConfig(
            model_name=model_name,
            head_num=self.num_heads,
            size_per_head=self.head_dim,
            inter_size=self.intermediate_size,
            num_layer=self.num_layers,
            rotary_embedding=self.rotary_dim,
            vocab_size=self.vocab_size,
            start_id=self.bos_token_id,
            end_id=self.eos_token_id,
            use_gptj_residual=self.use_parallel_residual,
            weight_data_type=dtype,
            tensor_para_size=tp,
            tasks=tasks,
        )


def read_hf_config(hf_dir: Path) -> NeoXConfig:
    path = hf_dir / "config.json"
    if not hf_dir.is_dir():
        raise UserError(f"--model {hf_dir} is not a directory{model_dirs.download_hint(hf_dir)}")
    if not path.is_file():
        raise UserError(f"{hf_dir} is not a Hugging Face model directory: no config.json")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a JSON object")
    return parse_hf_config(raw, source=str(path))


def parse_hf_config(raw: dict[str, Any], source: str = "config.json") -> NeoXConfig:
    model_type = raw.get("model_type")
    if model_type != "gpt_neox":
        raise UserError(f"{source}: not a GPT-NeoX model (model_type is {model_type!r}, expected 'gpt_neox')")
    try:
        hidden = _int(raw, "hidden_size")
        heads = _int(raw, "num_attention_heads")
        cfg = NeoXConfig(
            hidden_size=hidden,
            num_heads=heads,
            num_layers=_int(raw, "num_hidden_layers"),
            intermediate_size=_int(raw, "intermediate_size"),
            vocab_size=_int(raw, "vocab_size"),
            rotary_pct=_rotary_pct(raw, source),
            use_parallel_residual=_flag(raw, "use_parallel_residual", True),
            attention_bias=_flag(raw, "attention_bias", True),
            bos_token_id=_token_id(raw.get("bos_token_id"), 0),
            eos_token_id=_token_id(raw.get("eos_token_id"), 0),
            tie_word_embeddings=_flag(raw, "tie_word_embeddings", False),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-5)),
            hidden_act=str(raw.get("hidden_act", "gelu")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{source}: incomplete GPT-NeoX config: {exc}") from None
    if hidden % heads:
        raise UserError(f"{source}: hidden_size {hidden} does not divide into {heads} heads")
    if cfg.hidden_act not in GELU_FORMULA:
        raise UserError(
            f"{source}: hidden_act {cfg.hidden_act!r} is not a GELU; "
            "FasterTransformer's GPT-NeoX only computes GELU"
        )
    return cfg


def _rotary_pct(raw: dict[str, Any], source: str) -> float:
    params = raw.get("rope_parameters")
    if isinstance(params, dict):
        rope_type = params.get("rope_type", "default")
        theta = params.get("rope_theta", layout.ROTARY_BASE)
        pct = params.get("partial_rotary_factor", raw.get("rotary_pct", DEFAULT_ROTARY_PCT))
    else:
        scaling = raw.get("rope_scaling")
        rope_type = (
            scaling.get("rope_type", scaling.get("type", "scaled"))
            if isinstance(scaling, dict)
            else "default"
        )
        theta = raw.get("rotary_emb_base", raw.get("rope_theta", layout.ROTARY_BASE))
        pct = raw.get("rotary_pct", DEFAULT_ROTARY_PCT)
    if rope_type != "default":
        raise UserError(
            f"{source}: rope scaling {rope_type!r} is not supported; FasterTransformer's GPT-NeoX "
            "only applies plain rotary embeddings"
        )
    if float(theta) != layout.ROTARY_BASE:
        raise UserError(
            f"{source}: rope_theta is {theta:g}; FasterTransformer hard-codes the rotary base "
            f"{layout.ROTARY_BASE:g}, so this model would give wrong results"
        )
    return float(pct)


def _int(raw: dict[str, Any], key: str) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


def _flag(raw: dict[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if value is None:  # transformers tests these by truth, so null is false
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _token_id(value: Any, default: int) -> int:
    if isinstance(value, list):  # some configs list several ids; FT takes one
        value = value[0] if value else None
    return default if value is None else int(value)
