"""Build the FT backend's input tensors and read its outputs: numpy only, no transport.

Layouts follow triton-inference-server/fastertransformer_backend (all_models/gptneox/*/config.pbtxt,
all_models/gptneox/preprocessing/1/word_list.py) and `ftprefix.protocol`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ftprefix import protocol
from ftprefix.client.types import FinishReason, SamplingParams
from ftprefix.words import batch_words_to_ft


@dataclass(frozen=True)
class Row:
    """One prompt of a batch, already tokenised, with its task id resolved."""

    input_ids: list[int]
    task_id: int | None = None
    stop_words: list[list[int]] = field(default_factory=list)


def _column(values: Sequence[float | int], dtype: type) -> np.ndarray:
    return np.asarray(values, dtype=dtype).reshape(-1, 1)


def sampling_inputs(batch: int, params: SamplingParams, declared: frozenset[str]) -> dict[str, np.ndarray]:
    """The optional sampling tensors, only those the model declares (both servers declare all)."""
    candidates = {
        protocol.RUNTIME_TOP_K: _column([params.top_k] * batch, np.uint32),
        protocol.RUNTIME_TOP_P: _column([params.top_p] * batch, np.float32),
        protocol.TEMPERATURE: _column([params.temperature] * batch, np.float32),
        protocol.REPETITION_PENALTY: _column([params.repetition_penalty] * batch, np.float32),
        protocol.RANDOM_SEED: _column([params.seed] * batch, np.uint64),
    }
    return {name: array for name, array in candidates.items() if name in declared}


def task_ids_input(rows: Sequence[Row]) -> dict[str, np.ndarray]:
    """prompt_learning_task_name_ids, or nothing for a batch of base-model rows.

    FT has no id meaning "no prefix", so callers must not mix base rows and task rows in one request.
    """
    ids = [row.task_id for row in rows]
    if all(i is None for i in ids):
        return {}
    if any(i is None for i in ids):
        raise ValueError("rows with and without a task cannot share one FT request")
    return {protocol.TASK_IDS: _column(ids, np.uint32)}


def ft_inputs(
    rows: Sequence[Row], params: SamplingParams, declared: frozenset[str], pad_id: int = 0
) -> dict[str, np.ndarray]:
    """Every input tensor of one request to the `fastertransformer` model.

    Rows are right-padded to the longest (FT reads only the first input_lengths[b] ids of row b).
    """
    lengths = [len(row.input_ids) for row in rows]
    input_ids = np.full((len(rows), max(lengths)), pad_id, dtype=np.uint32)
    for b, row in enumerate(rows):
        input_ids[b, : len(row.input_ids)] = row.input_ids
    arrays = {
        protocol.INPUT_IDS: input_ids,
        protocol.INPUT_LENGTHS: _column(lengths, np.uint32),
        protocol.REQUEST_OUTPUT_LEN: _column([params.max_new_tokens] * len(rows), np.uint32),
        **sampling_inputs(len(rows), params, declared),
        **task_ids_input(rows),
    }
    if any(row.stop_words for row in rows) and protocol.STOP_WORDS_LIST in declared:
        arrays[protocol.STOP_WORDS_LIST] = batch_words_to_ft([row.stop_words for row in rows])
    return arrays


def generated_ids(output_ids: np.ndarray, sequence_length: np.ndarray, input_width: int) -> list[list[int]]:
    """The new tokens of each row (beam 0): output_ids[b, 0, input_width : sequence_length[b]].

    FT echoes `input_ids` as sent (rows padded to `input_width`) and writes the generated tokens
    after them, so they start at the padded width for every row; sequence_length counts both.
    """
    ids = np.asarray(output_ids)
    if ids.ndim == 2:  # a server that drops the beam axis
        ids = ids[:, None, :]
    lengths = np.asarray(sequence_length).reshape(ids.shape[0], -1)[:, 0]
    return [ids[b, 0, input_width : int(lengths[b])].astype(np.int64).tolist() for b in range(ids.shape[0])]


def finish_reason(
    generated: Sequence[int], max_new_tokens: int, end_id: int | None, stop_words: Sequence[Sequence[int]]
) -> FinishReason:
    """Why FT stopped a row: it stops early only at end_id or right after a stop word."""
    if end_id is not None and generated and generated[-1] == end_id:
        return "end_id"
    if any(len(w) and list(generated[-len(w) :]) == list(w) for w in stop_words):
        return "stop_words"
    if len(generated) >= max_new_tokens:
        return "length"
    return "end_id"


def strip_stop_text(text: str, stops: Sequence[str]) -> str:
    """Drop a trailing stop string: callers ask for the text before it, as OpenAI's `stop` does."""
    for stop in sorted(stops, key=len, reverse=True):
        if stop and text.endswith(stop):
            return text[: -len(stop)]
    return text


def csv_words(words: Sequence[str]) -> bytes:
    """Stop/bad words for the ensemble's preprocessing: one CSV line per row, as FT's word_list.py reads."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(words)
    return buffer.getvalue().encode("utf-8")


def ensemble_inputs(
    prompts: Sequence[str],
    task_ids: Sequence[int | None],
    stops: Sequence[str],
    params: SamplingParams,
    declared: frozenset[str],
) -> dict[str, np.ndarray]:
    """Every input tensor of one request to the text-in/text-out `ensemble` model."""
    batch = len(prompts)
    arrays = {
        protocol.TEXT_INPUT: np.array([[p.encode("utf-8")] for p in prompts], dtype=object),
        protocol.TEXT_OUTPUT_LEN: _column([params.max_new_tokens] * batch, np.uint32),
        protocol.TEXT_BAD_WORDS: np.array([[b""]] * batch, dtype=object),
        protocol.TEXT_STOP_WORDS: np.array([[csv_words(stops)]] * batch, dtype=object),
        **sampling_inputs(batch, params, declared),
        **task_ids_input([Row([0], task_id=t) for t in task_ids]),
    }
    return {name: array for name, array in arrays.items() if name in declared}


def ensemble_texts(output: np.ndarray, prompts: Sequence[str]) -> list[str]:
    """OUTPUT_0 [batch, beam] (beam 0), without the prompt when the server echoes it as FT's does."""
    rows = np.asarray(output).reshape(len(prompts), -1)[:, 0]
    texts = [
        value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value) for value in rows
    ]
    return [text[len(p) :] if text.startswith(p) else text for text, p in zip(texts, prompts, strict=True)]


class StreamState:
    """Turns the cumulative responses of a decoupled model into per-row increments.

    Each streamed response carries output_ids/sequence_length for the whole sequence so far (as
    FT's decoupled mode sends them), so new tokens are those past what was already seen.
    """

    def __init__(self, batch: int, input_width: int) -> None:
        self.input_width = input_width
        self.generated: list[list[int]] = [[] for _ in range(batch)]

    def update(self, output_ids: np.ndarray, sequence_length: np.ndarray) -> list[list[int]]:
        """Record one response; return each row's tokens that are new in it."""
        rows = generated_ids(output_ids, sequence_length, self.input_width)
        fresh = []
        for b, ids in enumerate(rows):
            seen = len(self.generated[b])
            fresh.append(ids[seen:] if len(ids) > seen else [])
            if len(ids) > seen:
                self.generated[b] = ids
        return fresh
