"""FasterTransformer's Triton tensors <-> engine rows, with FT's batch semantics (numpy only).

What real FT does with a batch, as recorded on an H100 (tests/data/ft-golden) and read in its
source (see docs/design.md, "What FT returns"):
- Triton may merge several requests into one execution; the FT backend pads their `input_ids`
  with zeros into one [rows, W] buffer, W the widest (fastertransformer_backend
  src/libfastertransformer.cc, ragged batching), and answers each request with its rows' slice of
  the output tensors, which are as wide as the merged batch's.
- It generates for M = max(request_output_len) steps. A row asking for k < M tokens gets k + 1:
  its limit is W + k and FT's length criterion `step >= limit` is checked after sampling
  (GptNeoXTritonModelInstance.cc `h_total_output_lengths_`, kernels/stop_criteria_kernels.cu).
- `output_ids[b, 0]` is the row's own input_lengths[b] tokens, its generated tokens right after
  them, then end_id up to W + M (gatherTree, kernels/decoding_kernels.cu); `sequence_length[b]`
  is W + the number of generated tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ftprefix import protocol
from ftprefix.engine.api import GenerationRequest, GenerationResult
from ftprefix.words import words_from_ft


class BadRequest(ValueError):
    """A request the server must reject with a clear message (and keep serving)."""


@dataclass(frozen=True)
class FtRequest:
    """One Triton request's rows, as the client asked for them."""

    rows: list[GenerationRequest]
    width: int  # input_ids.shape[1] as sent


def _column(inputs: Mapping[str, np.ndarray], name: str, batch: int) -> np.ndarray | None:
    arr = inputs.get(name)
    if arr is None:
        return None
    flat = np.asarray(arr).reshape(batch if np.ndim(arr) > 0 else 1, -1)
    if flat.shape[0] != batch:
        raise BadRequest(f"{name} has {flat.shape[0]} rows but input_ids has {batch}; send one value per row")
    return flat


def _words(arr: np.ndarray, name: str, row: int) -> list[list[int]]:
    try:
        return words_from_ft(arr)
    except ValueError as exc:
        raise BadRequest(f"{name}[{row}]: {exc}") from None


# input tensor -> (GenerationRequest field, how to read one row's value)
_SCALARS = {
    protocol.TASK_IDS: ("task_id", int),
    protocol.RUNTIME_TOP_K: ("top_k", int),
    protocol.RUNTIME_TOP_P: ("top_p", float),
    protocol.TEMPERATURE: ("temperature", float),
    protocol.REPETITION_PENALTY: ("repetition_penalty", float),
    protocol.RANDOM_SEED: ("random_seed", int),
    protocol.IS_RETURN_LOG_PROBS: ("return_log_probs", bool),
    protocol.MIN_LENGTH: ("min_length", int),
    protocol.END_ID: ("end_id", int),
}
_WORDS = {protocol.STOP_WORDS_LIST: "stop_words", protocol.BAD_WORDS_LIST: "bad_words"}


def decode_request(inputs: Mapping[str, np.ndarray]) -> FtRequest:
    """One Triton request's tensors (batch first) -> its rows; missing optional inputs take FT's defaults."""
    for spec in protocol.FT_INPUTS:
        if not spec.optional and inputs.get(spec.name) is None:
            raise BadRequest(f"missing required input {spec.name}")
    input_ids = np.asarray(inputs[protocol.INPUT_IDS])
    ids = input_ids.reshape(input_ids.shape[0], -1)
    batch = ids.shape[0]
    lengths = _column(inputs, protocol.INPUT_LENGTHS, batch)
    out_lens = _column(inputs, protocol.REQUEST_OUTPUT_LEN, batch)
    assert lengths is not None and out_lens is not None
    beam = _column(inputs, protocol.BEAM_WIDTH, batch)
    if beam is not None and np.any(beam > 1):
        raise BadRequest("beam_width > 1 is not supported: send beam_width 1 or leave it out")
    scalars = {name: _column(inputs, name, batch) for name in _SCALARS}
    rows = []
    for b in range(batch):
        n = int(lengths[b, 0])
        if not 0 <= n <= ids.shape[1]:
            raise BadRequest(f"input_lengths[{b}] = {n} but input_ids rows hold {ids.shape[1]} tokens")
        row = GenerationRequest(
            input_ids=[int(t) for t in ids[b, :n]], request_output_len=int(out_lens[b].max())
        )
        for name, (attr, cast) in _SCALARS.items():
            values = scalars[name]
            if values is not None:
                setattr(row, attr, cast(values[b, 0]))
        for name, attr in _WORDS.items():
            if inputs.get(name) is not None:
                setattr(row, attr, _words(np.asarray(inputs[name])[b], name, b))
        rows.append(row)
    return FtRequest(rows, ids.shape[1])


class FtBatch:
    """The requests of one execution, run and answered as FT runs and answers them."""

    def __init__(self, requests: Sequence[FtRequest], default_end_id: int) -> None:
        self.requests = list(requests)
        self.rows = [row for r in self.requests for row in r.rows]
        self.width = max(r.width for r in self.requests)  # W
        self.max_out = max(row.request_output_len for row in self.rows)  # M
        self.end_ids = [default_end_id if row.end_id is None else int(row.end_id) for row in self.rows]

    def engine_rows(self) -> list[GenerationRequest]:
        """The rows with FT's effective output length: k + 1 below the batch's maximum M."""
        return [
            replace(row, request_output_len=min(row.request_output_len + 1, self.max_out))
            for row in self.rows
        ]

    def responses(
        self, generated: Sequence[Sequence[int]], results: Sequence[GenerationResult] | None = None
    ) -> list[dict[str, np.ndarray]]:
        """FT's output tensors for the tokens so far (`results` add the log probs), one dict per request."""
        rows, width, max_out = len(self.rows), self.width, self.max_out
        output_ids = np.empty((rows, 1, width + max_out), dtype=np.uint32)
        output_ids[:, 0, :] = np.asarray(self.end_ids, dtype=np.uint32)[:, None]
        seq_len = np.zeros((rows, 1), dtype=np.uint32)
        cum = np.zeros((rows, 1), dtype=np.float32)
        log_probs = np.zeros((rows, 1, max_out), dtype=np.float32)
        for b, (row, tokens) in enumerate(zip(self.rows, generated, strict=True)):
            n = len(row.input_ids)
            output_ids[b, 0, :n] = row.input_ids
            output_ids[b, 0, n : n + len(tokens)] = tokens
            seq_len[b, 0] = width + len(tokens)
            if results is not None:
                cum[b, 0] = results[b].cum_log_prob
                log_probs[b, 0, : len(results[b].output_log_probs)] = results[b].output_log_probs
        out, start = [], 0
        for request in self.requests:
            part = slice(start, start + len(request.rows))
            start = part.stop
            out.append(
                {
                    protocol.OUTPUT_IDS: output_ids[part],
                    protocol.SEQUENCE_LENGTH: seq_len[part],
                    protocol.CUM_LOG_PROBS: cum[part],
                    protocol.OUTPUT_LOG_PROBS: log_probs[part],
                }
            )
        return out
