"""The wire contract between clients and both servers (the GPU FT backend and the CPU twin).

`FT_INPUTS` / `FT_OUTPUTS` are the one description of the `fastertransformer` model's tensors:
name, numpy dtype, dims per row, optional or not, scalar per row or not. The Triton configs
(serving/interface.py), the twin's request decoding (serving/ft_batch.py), the client's tensors
(client/wire.py) and the client benchmark all derive from them. Names, types and shapes follow
triton-inference-server/fastertransformer_backend all_models/gpt/fastertransformer/config.pbtxt
(ragged `input_ids` with the `input_ids_item_shape` batch input) and all_models/gptneox/.
No torch here: the client imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FT_MODEL = "fastertransformer"  # token ids in, token ids out
ENSEMBLE_MODEL = "ensemble"  # text in, text out (preprocessing -> fastertransformer -> postprocessing)


@dataclass(frozen=True)
class WireTensor:
    """One tensor of a Triton model, as the client sends it (with the leading batch dimension)."""

    name: str
    dtype: np.dtype
    dims: tuple[int, ...]  # per row, without the batch dimension; -1 = any length
    optional: bool = False
    # [batch, 1] on the wire, [batch] inside FT: the backend's `reshape: { shape: [ ] }`
    scalar_per_row: bool = False
    # requests with different lengths may be batched together (`allow_ragged_batch`)
    ragged: bool = False

    def column(self, values: Sequence[float | int]) -> np.ndarray:
        """One value per row as this tensor's [batch, 1] array."""
        return np.asarray(values, dtype=self.dtype).reshape(-1, 1)


def _scalar(name: str, dtype: str) -> WireTensor:
    return WireTensor(name, np.dtype(dtype), (1,), optional=True, scalar_per_row=True)


# fastertransformer model inputs
INPUT_IDS = "input_ids"  # [batch, max_input_len], rows right-padded
INPUT_LENGTHS = "input_lengths"
REQUEST_OUTPUT_LEN = "request_output_len"
RUNTIME_TOP_K = "runtime_top_k"
RUNTIME_TOP_P = "runtime_top_p"
BEAM_SEARCH_DIVERSITY_RATE = "beam_search_diversity_rate"
TEMPERATURE = "temperature"
LEN_PENALTY = "len_penalty"
REPETITION_PENALTY = "repetition_penalty"
RANDOM_SEED = "random_seed"
IS_RETURN_LOG_PROBS = "is_return_log_probs"
# generated tokens before end_id may be chosen: FT masks its logit until then
# (layers/sampling_layers/BaseSamplingLayer.cc, kernels/sampling_penalty_kernels.cu
# batchApplyMinLengthPenalty); GptNeoX::forward hands every input to the sampling layers' setup
MIN_LENGTH = "min_length"
BEAM_WIDTH = "beam_width"
START_ID = "start_id"
END_ID = "end_id"
STOP_WORDS_LIST = "stop_words_list"  # [batch, 2, L], see ftprefix.words
BAD_WORDS_LIST = "bad_words_list"
TASK_IDS = "prompt_learning_task_name_ids"

FT_INPUTS: tuple[WireTensor, ...] = (
    WireTensor(INPUT_IDS, np.dtype("uint32"), (-1,), ragged=True),
    _scalar(START_ID, "uint32"),
    _scalar(END_ID, "uint32"),
    WireTensor(INPUT_LENGTHS, np.dtype("uint32"), (1,), scalar_per_row=True),
    WireTensor(REQUEST_OUTPUT_LEN, np.dtype("uint32"), (-1,)),
    _scalar(RUNTIME_TOP_K, "uint32"),
    _scalar(RUNTIME_TOP_P, "float32"),
    _scalar(BEAM_SEARCH_DIVERSITY_RATE, "float32"),
    _scalar(TEMPERATURE, "float32"),
    _scalar(LEN_PENALTY, "float32"),
    _scalar(REPETITION_PENALTY, "float32"),
    _scalar(RANDOM_SEED, "uint64"),
    _scalar(IS_RETURN_LOG_PROBS, "bool"),
    _scalar(MIN_LENGTH, "int32"),
    _scalar(BEAM_WIDTH, "uint32"),
    WireTensor(BAD_WORDS_LIST, np.dtype("int32"), (2, -1), optional=True),
    WireTensor(STOP_WORDS_LIST, np.dtype("int32"), (2, -1), optional=True),
    _scalar(TASK_IDS, "uint32"),
)
FT_INPUT = {t.name: t for t in FT_INPUTS}

# The most runtime_top_k FT samples from: layers/sampling_layers/TopKSamplingLayer.cu clips k with
# setup_topk_runtime_args<1024> (its kernel's comment still says 64, from before), and
# kernels/sampling_topk_kernels.cu runs k up to 1024. Before clipping, the layer sizes its
# workspace by the k it was sent, in int (8 candidates per k per row): a k far above this costs GPU
# memory and from about 2**28 overflows, so clients send at most this, which FT reads the same.
TOP_K_MAX = 1024

# The FT backend's ragged batching: Triton tells the backend each request's `input_ids` shape in
# this batch input, and the backend pads the merged requests (libfastertransformer.cc).
INPUT_IDS_ITEM_SHAPE = "input_ids_item_shape"

# fastertransformer model outputs; see docs/design.md "What FT returns" for the layout
OUTPUT_IDS = "output_ids"  # [batch, beam, W + max request_output_len]
SEQUENCE_LENGTH = "sequence_length"  # [batch, beam]
CUM_LOG_PROBS = "cum_log_probs"  # [batch, beam]
OUTPUT_LOG_PROBS = "output_log_probs"  # [batch, beam, max request_output_len]

FT_OUTPUTS: tuple[WireTensor, ...] = (
    WireTensor(OUTPUT_IDS, np.dtype("uint32"), (-1, -1)),
    WireTensor(SEQUENCE_LENGTH, np.dtype("uint32"), (-1,)),
    WireTensor(CUM_LOG_PROBS, np.dtype("float32"), (-1,)),
    WireTensor(OUTPUT_LOG_PROBS, np.dtype("float32"), (-1, -1)),
)

# ensemble (text) names
TEXT_INPUT = "INPUT_0"  # BYTES [batch, 1]
TEXT_OUTPUT_LEN = "INPUT_1"  # UINT32 [batch, 1]
TEXT_BAD_WORDS = "INPUT_2"  # BYTES [batch, n]
TEXT_STOP_WORDS = "INPUT_3"  # BYTES [batch, n]
TEXT_OUTPUT = "OUTPUT_0"  # BYTES [batch, beam]: the generated text only

# Model config `parameters` entry publishing the task table (TaskTable.to_json), so clients never
# hard-code ids. FT's backend ignores parameters it does not know.
TASK_TABLE_PARAMETER = "prompt_learning_tasks"
# Model config `parameters` entry with config.ini's end_id: what FT fills output_ids with.
END_ID_PARAMETER = "end_id"
# Model config `parameters` entry with config.ini's vocab_size: FT reads an input id at or above it
# out of its embedding table's bounds (no check on the GPU), so clients refuse such ids.
VOCAB_SIZE_PARAMETER = "vocab_size"
# The FT backend's own parameter: the weights' data type (fp16 or fp32).
DATA_TYPE_PARAMETER = "data_type"

# Request `parameters` entry: the task name of each row, as the client resolved it, JSON-encoded.
# Task ids never move except through `ftprefix tasks compact`; after one, a client holding an older
# table could name the wrong prefix. The CPU server refuses a request whose ids no longer name
# those tasks (or name a removed task's retired slot), with TASK_TABLE_CHANGED in the message,
# before generating anything (so resending after re-reading the table is safe); FT's GPU backend
# ignores it.
TASK_NAMES_PARAMETER = "prompt_learning_task_names"
TASK_TABLE_CHANGED = "task table changed"
# An error on a gRPC stream is a message without a status (Triton's ModelStreamInferResponse has
# only `error_message`; over HTTP, generate_stream answers a refusal before its first response
# with the HTTP status), so the CPU server starts the message of a request it refuses on a stream
# (a decoupled model) with this, and the client reads it as INVALID_ARGUMENT: a refused request is
# then the same error streamed or not, and one refused for stale task ids is resent.
REFUSED_ON_STREAM = "INVALID_ARGUMENT: "
