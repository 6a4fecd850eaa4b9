"""The wire contract between clients and both servers (GPU FT backend and the CPU twin).

Tensor names follow triton-inference-server/fastertransformer_backend
(all_models/gptneox/fastertransformer/config.pbtxt and all_models/gptneox/ensemble/config.pbtxt).
No torch here: the client imports this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

FT_MODEL = "fastertransformer"  # token ids in, token ids out
ENSEMBLE_MODEL = "ensemble"  # text in, text out (preprocessing -> fastertransformer -> postprocessing)

# fastertransformer model inputs (max_batch_size > 0, so each has a leading batch dim)
INPUT_IDS = "input_ids"  # UINT32 [batch, max_input_len], rows padded
INPUT_LENGTHS = "input_lengths"  # UINT32 [batch, 1]
REQUEST_OUTPUT_LEN = "request_output_len"  # UINT32 [batch, 1]
RUNTIME_TOP_K = "runtime_top_k"  # UINT32 [batch, 1]
RUNTIME_TOP_P = "runtime_top_p"  # FP32 [batch, 1]
TEMPERATURE = "temperature"  # FP32 [batch, 1]
REPETITION_PENALTY = "repetition_penalty"  # FP32 [batch, 1]
RANDOM_SEED = "random_seed"  # UINT64 [batch, 1]
IS_RETURN_LOG_PROBS = "is_return_log_probs"  # BOOL [batch, 1]
START_ID = "start_id"  # UINT32 [batch, 1]
END_ID = "end_id"  # UINT32 [batch, 1]
STOP_WORDS_LIST = "stop_words_list"  # INT32 [batch, 2, L]
BAD_WORDS_LIST = "bad_words_list"  # INT32 [batch, 2, L]
TASK_IDS = "prompt_learning_task_name_ids"  # UINT32 [batch, 1]

# fastertransformer model outputs
OUTPUT_IDS = "output_ids"  # UINT32 [batch, beam, seq]
SEQUENCE_LENGTH = "sequence_length"  # UINT32 [batch, beam]
CUM_LOG_PROBS = "cum_log_probs"  # FP32 [batch, beam]
OUTPUT_LOG_PROBS = "output_log_probs"  # FP32 [batch, beam, request_output_len]

# ensemble (text) names
TEXT_INPUT = "INPUT_0"  # BYTES [batch, 1]
TEXT_OUTPUT_LEN = "INPUT_1"  # UINT32 [batch, 1]
TEXT_BAD_WORDS = "INPUT_2"  # BYTES [batch, n]
TEXT_STOP_WORDS = "INPUT_3"  # BYTES [batch, n]
TEXT_OUTPUT = "OUTPUT_0"  # BYTES [batch, beam]

# Model config `parameters` entry publishing the task table, so clients never hard-code ids.
TASK_TABLE_PARAMETER = "prompt_learning_tasks"

# Request `parameters` entry: the task name of each row, as the client resolved it, JSON-encoded.
# Task ids are positions in the table and `ftprefix tasks remove` moves later ones down, so a
# client holding an older table could name the wrong prefix. The CPU server refuses a request
# whose ids no longer name those tasks, with TASK_TABLE_CHANGED in the message, before generating
# anything (so resending after re-reading the table is safe); FT's GPU backend ignores it.
TASK_NAMES_PARAMETER = "prompt_learning_task_names"
TASK_TABLE_CHANGED = "task table changed"


@dataclass(frozen=True)
class TaskInfo:
    id: int
    name: str
    prompt_length: int


def encode_task_table(tasks: list[TaskInfo]) -> str:
    """JSON list, ordered by id: [{"id": 0, "name": "taskA", "prompt_length": 8}, ...]."""
    return json.dumps([{"id": t.id, "name": t.name, "prompt_length": t.prompt_length} for t in tasks])


def decode_task_table(text: str) -> list[TaskInfo]:
    return [TaskInfo(int(d["id"]), str(d["name"]), int(d["prompt_length"])) for d in json.loads(text or "[]")]
