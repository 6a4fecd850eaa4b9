"""The one description of the Triton tensor interfaces; every config.pbtxt is generated from it.

The `fastertransformer` model's inputs and outputs mirror
triton-inference-server/fastertransformer_backend all_models/gptneox/fastertransformer/config.pbtxt
(names, types, dims, reshape, optional flags). The GPU config (backend "fastertransformer") and its CPU
twin (python backend running ftprefix.engine) are both built by `fastertransformer_config`, so
they cannot drift apart. The preprocessing / postprocessing / ensemble configs mirror the same
repository's all_models/gptneox/{preprocessing,postprocessing,ensemble}/config.pbtxt.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ftprefix import protocol

MAX_BATCH_SIZE = 1024  # as in the backend's example configs
# Dynamic batching: merge requests that arrive within this window (the CPU twin runs one engine
# call per merged batch; the FT backend does the same on the GPU).
MAX_QUEUE_DELAY_US = 5000


@dataclass(frozen=True)
class TensorDef:
    name: str
    data_type: int  # model_config_pb2.DataType
    dims: tuple[int, ...]
    scalar_per_row: bool = False  # FT: `reshape: { shape: [ ] }` turns [batch, 1] into [batch]
    optional: bool = False


def _scalar(name: str, data_type: int) -> TensorDef:
    return TensorDef(name, data_type, (1,), scalar_per_row=True, optional=True)


FT_INPUTS: tuple[TensorDef, ...] = (
    TensorDef(protocol.INPUT_IDS, mc.TYPE_UINT32, (-1,)),
    _scalar(protocol.START_ID, mc.TYPE_UINT32),
    _scalar(protocol.END_ID, mc.TYPE_UINT32),
    TensorDef(protocol.INPUT_LENGTHS, mc.TYPE_UINT32, (1,), scalar_per_row=True),
    TensorDef(protocol.REQUEST_OUTPUT_LEN, mc.TYPE_UINT32, (-1,)),
    _scalar(protocol.RUNTIME_TOP_K, mc.TYPE_UINT32),
    _scalar(protocol.RUNTIME_TOP_P, mc.TYPE_FP32),
    _scalar("beam_search_diversity_rate", mc.TYPE_FP32),
    _scalar(protocol.TEMPERATURE, mc.TYPE_FP32),
    _scalar("len_penalty", mc.TYPE_FP32),
    _scalar(protocol.REPETITION_PENALTY, mc.TYPE_FP32),
    _scalar(protocol.RANDOM_SEED, mc.TYPE_UINT64),
    _scalar(protocol.IS_RETURN_LOG_PROBS, mc.TYPE_BOOL),
    _scalar("beam_width", mc.TYPE_UINT32),
    TensorDef(protocol.BAD_WORDS_LIST, mc.TYPE_INT32, (2, -1), optional=True),
    TensorDef(protocol.STOP_WORDS_LIST, mc.TYPE_INT32, (2, -1), optional=True),
    _scalar(protocol.TASK_IDS, mc.TYPE_UINT32),
)

FT_OUTPUTS: tuple[TensorDef, ...] = (
    TensorDef(protocol.OUTPUT_IDS, mc.TYPE_UINT32, (-1, -1)),
    TensorDef(protocol.SEQUENCE_LENGTH, mc.TYPE_UINT32, (-1,)),
    TensorDef(protocol.CUM_LOG_PROBS, mc.TYPE_FP32, (-1,)),
    TensorDef(protocol.OUTPUT_LOG_PROBS, mc.TYPE_FP32, (-1, -1)),
)

# The ensemble passes these optional sampling inputs straight through to `fastertransformer`.
_PASS_THROUGH = (
    protocol.RUNTIME_TOP_K,
    protocol.RUNTIME_TOP_P,
    "beam_search_diversity_rate",
    protocol.TEMPERATURE,
    "len_penalty",
    protocol.REPETITION_PENALTY,
    protocol.RANDOM_SEED,
    protocol.IS_RETURN_LOG_PROBS,
    "beam_width",
    protocol.START_ID,
    protocol.END_ID,
    protocol.TASK_IDS,
)

PREPROCESSING = "preprocessing"
POSTPROCESSING = "postprocessing"


def _add_tensor(container: object, t: TensorDef, *, with_io_flags: bool) -> None:
    entry = container.add(name=t.name, data_type=t.data_type, dims=list(t.dims))  # type: ignore[attr-defined]
    if with_io_flags:
        if t.scalar_per_row:
            entry.reshape.SetInParent()  # `reshape: { shape: [ ] }`
        if t.optional:
            entry.optional = True


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
) -> mc.ModelConfig:
    """The `fastertransformer` model: backend "fastertransformer" (GPU) or "python" (CPU twin)."""
    cfg = _base(protocol.FT_MODEL, backend=backend)
    if backend == "fastertransformer":
        cfg.default_model_filename = "gptneox"
    cfg.model_transaction_policy.decoupled = decoupled
    for t in FT_INPUTS:
        _add_tensor(cfg.input, t, with_io_flags=True)
    for t in FT_OUTPUTS:
        _add_tensor(cfg.output, t, with_io_flags=True)
    # FT's backend supports one instance group only (libfastertransformer.cc ModelState ctor).
    cfg.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    cfg.dynamic_batching.max_queue_delay_microseconds = MAX_QUEUE_DELAY_US
    _set_parameters(cfg, parameters)
    return cfg


def preprocessing_config(parameters: dict[str, str]) -> mc.ModelConfig:
    cfg = _base(PREPROCESSING, backend="python")
    for t in (
        TensorDef("QUERY", mc.TYPE_STRING, (-1,)),
        TensorDef("BAD_WORDS_DICT", mc.TYPE_STRING, (-1,)),
        TensorDef("STOP_WORDS_DICT", mc.TYPE_STRING, (-1,)),
        TensorDef("REQUEST_OUTPUT_LEN", mc.TYPE_UINT32, (-1,)),
    ):
        _add_tensor(cfg.input, t, with_io_flags=False)
    for t in (
        TensorDef("INPUT_ID", mc.TYPE_UINT32, (-1,)),
        TensorDef("REQUEST_INPUT_LEN", mc.TYPE_UINT32, (1,)),
        TensorDef("BAD_WORDS_IDS", mc.TYPE_INT32, (2, -1)),
        TensorDef("STOP_WORDS_IDS", mc.TYPE_INT32, (2, -1)),
        TensorDef("REQUEST_OUTPUT_LEN", mc.TYPE_UINT32, (-1,)),
    ):
        _add_tensor(cfg.output, t, with_io_flags=False)
    cfg.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    _set_parameters(cfg, parameters)
    return cfg


def postprocessing_config(parameters: dict[str, str]) -> mc.ModelConfig:
    cfg = _base(POSTPROCESSING, backend="python")
    _add_tensor(cfg.input, TensorDef("TOKENS_BATCH", mc.TYPE_UINT32, (-1, -1)), with_io_flags=False)
    _add_tensor(cfg.input, TensorDef("sequence_length", mc.TYPE_UINT32, (-1,)), with_io_flags=False)
    _add_tensor(cfg.output, TensorDef("OUTPUT", mc.TYPE_STRING, (-1, -1)), with_io_flags=False)
    cfg.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    _set_parameters(cfg, parameters)
    return cfg


def ensemble_config(parameters: dict[str, str]) -> mc.ModelConfig:
    """Text in, text out: preprocessing -> fastertransformer -> postprocessing."""
    cfg = _base(protocol.ENSEMBLE_MODEL, platform="ensemble")
    for name, dtype in (
        (protocol.TEXT_INPUT, mc.TYPE_STRING),
        (protocol.TEXT_OUTPUT_LEN, mc.TYPE_UINT32),
        (protocol.TEXT_BAD_WORDS, mc.TYPE_STRING),
        (protocol.TEXT_STOP_WORDS, mc.TYPE_STRING),
    ):
        _add_tensor(cfg.input, TensorDef(name, dtype, (-1,)), with_io_flags=False)
    by_name = {t.name: t for t in FT_INPUTS}
    for name in _PASS_THROUGH:
        t = by_name[name]
        _add_tensor(cfg.input, TensorDef(name, t.data_type, (1,), optional=True), with_io_flags=True)
    _add_tensor(cfg.output, TensorDef(protocol.TEXT_OUTPUT, mc.TYPE_STRING, (-1, -1)), with_io_flags=False)
    for t in FT_OUTPUTS[1:]:
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
    post.input_map.update({"TOKENS_BATCH": "_TOKENS_BATCH", "sequence_length": protocol.SEQUENCE_LENGTH})
    post.output_map.update({"OUTPUT": protocol.TEXT_OUTPUT})
    _set_parameters(cfg, parameters)
    return cfg


def to_pbtxt(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
