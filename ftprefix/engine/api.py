"""Request/result types of the reference engine, one row of FasterTransformer's batch each.

`GenerationRequest`'s fields map 1:1 onto the FT backend's per-row inputs (input_ids/input_lengths,
request_output_len, runtime_top_k, runtime_top_p, temperature, repetition_penalty, random_seed,
end_id, stop_words_list, bad_words_list, is_return_log_probs, min_length, prompt_learning_task_name_ids).
Results hold just the generated tokens: laying them out in FT's output tensors is the serving
layer's job (ftprefix/serving/ft_batch.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# prefix + input + output tokens of one row. FT itself sizes its buffers per batch and has no such
# limit below GPU memory; the CPU engine keeps one so that a row's KV cache and time stay bounded
MAX_TOTAL_LEN = 4096


@dataclass
class GenerationRequest:
    input_ids: list[int]
    request_output_len: int
    task_id: int | None = None  # index into the task table; None = plain base model
    top_k: int = 0  # FT: top_k == 0 and top_p == 0 means greedy
    top_p: float = 0.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    random_seed: int = 0
    end_id: int | None = None  # None = the model's end_id from config.ini
    stop_words: list[list[int]] = field(default_factory=list)  # each a token sequence
    bad_words: list[list[int]] = field(default_factory=list)
    return_log_probs: bool = False
    min_length: int = 0  # generated tokens before end_id may be chosen


@dataclass
class GenerationResult:
    generated_ids: list[int]  # an end_id or stop word that ended the row included, as FT keeps it
    finish_reason: str  # "length" | "end_id" | "stop_words"
    cum_log_prob: float = 0.0
    output_log_probs: list[float] = field(default_factory=list)  # one per generated token


@dataclass(frozen=True)
class Step:
    """One decoding step of a batch: each row's new tokens (none once it has finished)."""

    new_tokens: list[list[int]]
    finished: list[bool]
