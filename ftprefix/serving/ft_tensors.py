"""FasterTransformer's Triton tensors <-> engine requests/results (numpy only, no Triton imports).

Semantics follow triton-inference-server/fastertransformer_backend (src/libfastertransformer.cc)
and FT's GptNeoXTritonModelInstance: rows of `input_ids` are padded, `input_lengths` gives each
row's real length; `request_output_len` may carry several values per row and FT generates the
maximum; missing optional inputs take FT's defaults; `output_ids` is [batch, beam, max_input_len +
max_output_len] holding each row's padded input, then its generated tokens, then end_id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ftprefix import protocol
from ftprefix.engine.api import GenerationRequest, GenerationResult
from ftprefix.words import words_from_ft


class BadRequest(ValueError):
    """A request the server must reject with a clear message (and keep serving)."""


def _per_row(arr: np.ndarray | None, batch: int, name: str) -> np.ndarray | None:
    if arr is None:
        return None
    flat = np.asarray(arr).reshape(arr.shape[0], -1) if np.ndim(arr) > 0 else np.asarray(arr).reshape(1, 1)
    if flat.shape[0] != batch:
        raise BadRequest(f"{name} has {flat.shape[0]} rows but input_ids has {batch}; send one value per row")
    return flat


def _words(arr: np.ndarray) -> list[list[int]]:
    try:
        return words_from_ft(arr)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def requests_from_tensors(inputs: Mapping[str, np.ndarray]) -> list[GenerationRequest]:
    """One Triton request's tensors (batch first) -> one GenerationRequest per row."""
    for spec in protocol.FT_INPUTS:
        if not spec.optional and inputs.get(spec.name) is None:
            raise BadRequest(f"missing required input {spec.name}")
    input_ids = inputs[protocol.INPUT_IDS]
    ids = np.asarray(input_ids).reshape(input_ids.shape[0], -1)
    batch = ids.shape[0]

    def column(name: str) -> np.ndarray | None:
        return _per_row(inputs.get(name), batch, name)

    lens = column(protocol.INPUT_LENGTHS)
    out_lens = column(protocol.REQUEST_OUTPUT_LEN)
    assert lens is not None and out_lens is not None
    beam = column(protocol.BEAM_WIDTH)
    if beam is not None and np.any(beam > 1):
        raise BadRequest("beam_width > 1 is not supported: send beam_width 1 or leave it out")
    top_k, top_p = column(protocol.RUNTIME_TOP_K), column(protocol.RUNTIME_TOP_P)
    temperature, penalty = column(protocol.TEMPERATURE), column(protocol.REPETITION_PENALTY)
    seed, log_probs = column(protocol.RANDOM_SEED), column(protocol.IS_RETURN_LOG_PROBS)
    end_id, task_ids = column(protocol.END_ID), column(protocol.TASK_IDS)
    stop = inputs.get(protocol.STOP_WORDS_LIST)
    bad = inputs.get(protocol.BAD_WORDS_LIST)

    rows = []
    for b in range(batch):
        n = int(lens[b, 0])
        if n < 0 or n > ids.shape[1]:
            raise BadRequest(f"input_lengths[{b}] = {n} but input_ids rows hold {ids.shape[1]} tokens")
        req = GenerationRequest(
            input_ids=[int(t) for t in ids[b, :n]], request_output_len=int(out_lens[b].max())
        )
        if task_ids is not None:
            req.task_id = int(task_ids[b, 0])
        if top_k is not None:
            req.top_k = int(top_k[b, 0])
        if top_p is not None:
            req.top_p = float(top_p[b, 0])
        if temperature is not None:
            req.temperature = float(temperature[b, 0])
        if penalty is not None:
            req.repetition_penalty = float(penalty[b, 0])
        if seed is not None:
            req.random_seed = int(seed[b, 0])
        if log_probs is not None:
            req.return_log_probs = bool(log_probs[b, 0])
        if end_id is not None:
            req.end_id = int(end_id[b, 0])
        if stop is not None:
            req.stop_words = _words(np.asarray(stop)[b])
        if bad is not None:
            req.bad_words = _words(np.asarray(bad)[b])
        rows.append(req)
    return rows


def tensors_from_results(
    requests: Sequence[GenerationRequest],
    results: Sequence[GenerationResult],
    padded_input_ids: np.ndarray,
    default_end_id: int,
) -> dict[str, np.ndarray]:
    """Results of one Triton request's rows -> FT's output tensors (beam width 1).

    As FT lays them out: each row holds its input_ids exactly as sent (padding included, width W =
    max_input_len), then the generated tokens from position W on, then end_id up to W + the largest
    request_output_len; sequence_length = W + generated tokens.
    """
    batch, width = padded_input_ids.shape
    max_out = max((r.request_output_len for r in requests), default=0)
    output_ids = np.zeros((batch, 1, width + max_out), dtype=np.uint32)
    seq_len = np.zeros((batch, 1), dtype=np.uint32)
    cum = np.zeros((batch, 1), dtype=np.float32)
    log_probs = np.zeros((batch, 1, max_out), dtype=np.float32)
    for b, (req, res) in enumerate(zip(requests, results, strict=True)):
        generated = res.generated_ids[:max_out]
        output_ids[b, 0, :] = default_end_id if req.end_id is None else req.end_id
        output_ids[b, 0, :width] = padded_input_ids[b]
        output_ids[b, 0, width : width + len(generated)] = generated
        seq_len[b, 0] = width + len(generated)
        cum[b, 0] = res.cum_log_prob
        lp = res.output_log_probs[:max_out]
        log_probs[b, 0, : len(lp)] = lp
    return {
        protocol.OUTPUT_IDS: output_ids,
        protocol.SEQUENCE_LENGTH: seq_len,
        protocol.CUM_LOG_PROBS: cum,
        protocol.OUTPUT_LOG_PROBS: log_probs,
    }


def partial_result(req: GenerationRequest, generated: Sequence[int]) -> GenerationResult:
    """A streamed row so far: the input followed by the tokens generated up to this step."""
    ids = list(req.input_ids) + list(generated)
    return GenerationResult(
        output_ids=ids, sequence_length=len(ids), generated_ids=list(generated), finish_reason=""
    )
