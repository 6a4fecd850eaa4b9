"""Every config.pbtxt ftprefix writes, generated from the tensor table in `ftprefix.protocol`.

The GPU config (backend "fastertransformer") and its CPU twin (python backend running
ftprefix.engine) are both built by `fastertransformer_config`, so they cannot drift apart. The
preprocessing / postprocessing / ensemble configs follow triton-inference-server/
fastertransformer_backend all_models/gptneox/{preprocessing,postprocessing,ensemble}/config.pbtxt.
"""

from __future__ import annotations

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import np_to_triton_dtype

from ftprefix import protocol
from ftprefix.protocol import WireTensor
from ftprefix.serving.batching import DEFAULT_MAX_QUEUE_DELAY_US

MAX_BATCH_SIZE = 1024  # as in the backend's example configs

# The ensemble passes these optional inputs straight through to `fastertransformer`.
_PASS_THROUGH = tuple(t.name for t in protocol.FT_INPUTS if t.scalar_per_row and t.optional)

PREPROCESSING = "preprocessing"
POSTPROCESSING = "postprocessing"


def _data_type(dtype: np.dtype) -> int:
    name = np_to_triton_dtype(dtype)  # "UINT32", "BYTES", ...
    return mc.TYPE_STRING if name == "BYTES" else mc.DataType.Value(f"TYPE_{name}")


def _tensor(name: str, dtype: str, dims: tuple[int, ...]) -> WireTensor:
    return WireTensor(name, np.dtype(dtype), dims)


def _add_tensor(container: object, t: WireTensor, *, with_io_flags: bool) -> None:
    entry = container.add(name=t.name, data_type=_data_type(t.dtype), dims=list(t.dims))  # type: ignore[attr-defined]
    if with_io_flags:
        if t.scalar_per_row:
            entry.reshape.SetInParent()  # `reshape: { shape: [ ] }`
        if t.optional:
            entry.optional = True
        if t.ragged:
            entry.allow_ragged_batch = True


def _base(name: str, *, backend: str = "", platform: str = "") -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=name, max_batch_size=MAX_BATCH_SIZE)
    if backend:
        cfg.backend = backend
    if platform:
        cfg.platform = platform
    return cfg


def _set_parameters(cfg: mc.ModelConfig, params: dict[str, str]) -> None:
    for key, value in params.items():
        cfg.parameters[key].string_value = value


def fastertransformer_config(
    *,
    backend: str,
    parameters: dict[str, str],
    decoupled: bool = False,
    instances: int = 1,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
) -> mc.ModelConfig:
    """The `fastertransformer` model: backend "fastertransformer" (GPU) or "python" (CPU twin).

    `instances`: model instances; the FT backend gives each tensor_para_size GPUs and refuses to
    start unless the visible GPUs are a multiple of tp and at most instances x tp
    (fastertransformer_backend src/libfastertransformer.cc, ModelState)."""
    cfg = _base(protocol.FT_MODEL, backend=backend)
    if backend == "fastertransformer":
        cfg.default_model_filename = "gptneox"
    cfg.model_transaction_policy.decoupled = decoupled
    for t in protocol.FT_INPUTS:
        _add_tensor(cfg.input, t, with_io_flags=True)
    for t in protocol.FT_OUTPUTS:
        _add_tensor(cfg.output, t, with_io_flags=True)
    # Ragged batching as the backend's GPT example declares it: without it Triton merges only
    # requests whose input_ids have the same length, so single-prompt clients are never batched.
    cfg.batch_input.add(
        kind=mc.BatchInput.BATCH_ITEM_SHAPE,
        target_name=[protocol.INPUT_IDS_ITEM_SHAPE],
        data_type=mc.TYPE_INT32,
        source_input=[protocol.INPUT_IDS],
    )
    # FT's backend supports one instance group only (libfastertransformer.cc ModelState ctor).
    cfg.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    _set_parameters(cfg, parameters)
    return cfg


def preprocessing_config(parameters: dict[str, str]) -> mc.ModelConfig:
    cfg = _base(PREPROCESSING, backend="python")
    for t in (
        _tensor("QUERY", "object", (-1,)),
        _tensor("BAD_WORDS_DICT", "object", (-1,)),
        _tensor("STOP_WORDS_DICT", "object", (-1,)),
        _tensor("REQUEST_OUTPUT_LEN", "uint32", (-1,)),
    ):
        _add_tensor(cfg.input, t, with_io_flags=False)
    for t in (
        _tensor("INPUT_ID", "uint32", (-1,)),
        _tensor("REQUEST_INPUT_LEN", "uint32", (1,)),
        _tensor("BAD_WORDS_IDS", "int32", (2, -1)),
        _tensor("STOP_WORDS_IDS", "int32", (2, -1)),
        _tensor("REQUEST_OUTPUT_LEN", "uint32", (-1,)),
    ):
        _add_tensor(cfg.output, t, with_io_flags=False)
    cfg.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    _set_parameters(cfg, parameters)
    return cfg


def postprocessing_config(parameters: dict[str, str]) -> mc.ModelConfig:
    cfg = _base(POSTPROCESSING, backend="python")
    for t in (
        _tensor("TOKENS_BATCH", "uint32", (-1, -1)),
        _tensor("REQUEST_INPUT_LEN", "uint32", (1,)),
        _tensor("REQUEST_OUTPUT_LEN", "uint32", (-1,)),
    ):
        _add_tensor(cfg.input, t, with_io_flags=False)
    _add_tensor(cfg.output, _tensor("OUTPUT", "object", (-1, -1)), with_io_flags=False)
    cfg.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    _set_parameters(cfg, parameters)
    return cfg


def ensemble_config(parameters: dict[str, str]) -> mc.ModelConfig:
    """Text in, text out: preprocessing -> fastertransformer -> postprocessing."""
    cfg = _base(protocol.ENSEMBLE_MODEL, platform="ensemble")
    for name, dtype in (
        (protocol.TEXT_INPUT, "object"),
        (protocol.TEXT_OUTPUT_LEN, "uint32"),
        (protocol.TEXT_BAD_WORDS, "object"),
        (protocol.TEXT_STOP_WORDS, "object"),
    ):
        _add_tensor(cfg.input, _tensor(name, dtype, (-1,)), with_io_flags=False)
    for name in _PASS_THROUGH:
        t = protocol.FT_INPUT[name]
        _add_tensor(cfg.input, WireTensor(name, t.dtype, (1,), optional=True), with_io_flags=True)
    _add_tensor(cfg.output, _tensor(protocol.TEXT_OUTPUT, "object", (-1, -1)), with_io_flags=False)
    for t in protocol.FT_OUTPUTS[1:]:
        _add_tensor(cfg.output, t, with_io_flags=False)

    pre = cfg.ensemble_scheduling.step.add(model_name=PREPROCESSING, model_version=-1)
    pre.input_map.update(
        {
            "QUERY": protocol.TEXT_INPUT,
            "REQUEST_OUTPUT_LEN": protocol.TEXT_OUTPUT_LEN,
            "BAD_WORDS_DICT": protocol.TEXT_BAD_WORDS,
            "STOP_WORDS_DICT": protocol.TEXT_STOP_WORDS,
        }
    )
    pre.output_map.update(
        {
            "INPUT_ID": "_INPUT_ID",
            "BAD_WORDS_IDS": "_BAD_WORDS_IDS",
            "STOP_WORDS_IDS": "_STOP_WORDS_IDS",
            "REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN",
            "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN",
        }
    )
    ft = cfg.ensemble_scheduling.step.add(model_name=protocol.FT_MODEL, model_version=-1)
    ft.input_map.update(
        {
            protocol.INPUT_IDS: "_INPUT_ID",
            protocol.INPUT_LENGTHS: "_REQUEST_INPUT_LEN",
            protocol.REQUEST_OUTPUT_LEN: "_REQUEST_OUTPUT_LEN",
            protocol.STOP_WORDS_LIST: "_STOP_WORDS_IDS",
            protocol.BAD_WORDS_LIST: "_BAD_WORDS_IDS",
            **{name: name for name in _PASS_THROUGH},
        }
    )
    ft.output_map.update(
        {
            protocol.OUTPUT_IDS: "_TOKENS_BATCH",
            protocol.SEQUENCE_LENGTH: protocol.SEQUENCE_LENGTH,
            protocol.CUM_LOG_PROBS: protocol.CUM_LOG_PROBS,
            protocol.OUTPUT_LOG_PROBS: protocol.OUTPUT_LOG_PROBS,
        }
    )
    post = cfg.ensemble_scheduling.step.add(model_name=POSTPROCESSING, model_version=-1)
    post.input_map.update(
        {
            "TOKENS_BATCH": "_TOKENS_BATCH",
            "REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN",
            "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN",
        }
    )
    post.output_map.update({"OUTPUT": protocol.TEXT_OUTPUT})
    _set_parameters(cfg, parameters)
    return cfg


def to_pbtxt(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
