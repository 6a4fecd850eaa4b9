"""The reference engine: a converted FT directory in, FasterTransformer-equivalent generation out.

Batched like FT: one prefill over all rows (each with its own task, prefix length and input
length), then one token per step for every row from the KV cache.

Stopping as FT stops (NVIDIA/FasterTransformer src/fastertransformer/models/gptneox/GptNeoX.cc,
kernels/stop_criteria_kernels.cu): a row finishes when it samples end_id (kept), when its tokens
end with a stop word (kept), or after request_output_len tokens; finished rows are fed end_id
until every row has finished. How FT lays the results out in its output tensors, including the
extra token it gives rows asking for fewer tokens than others in the batch, is the serving
layer's business (ftprefix/serving/ft_batch.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ftprefix import layout
from ftprefix.engine import shared_weights as shared
from ftprefix.engine.api import MAX_TOTAL_LEN, GenerationRequest, GenerationResult, Step
from ftprefix.engine.model import KVCache, Transformer
from ftprefix.engine.sampling import Sampler
from ftprefix.engine.weights import load_prefixes, load_weights
from ftprefix.words import ends_with_stop_word


@dataclass
class _RowState:
    request: GenerationRequest
    end_id: int
    history: list[int]
    generated: list[int] = field(default_factory=list)
    token_log_probs: list[float] = field(default_factory=list)
    output_log_probs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    step_logits: list[np.ndarray] = field(default_factory=list)


class Engine:
    def __init__(
        self,
        directory: Path,
        config: layout.ModelConfig,
        transformer: Transformer,
        prefixes: list[torch.Tensor],
        max_total_len: int = MAX_TOTAL_LEN,
    ) -> None:
        self.directory = directory
        self.config = config
        self._model = transformer
        self._prefixes = prefixes
        self.max_total_len = max_total_len

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        gelu: Literal["tanh", "erf"] = "tanh",
        threads: int | None = None,
        max_total_len: int = MAX_TOTAL_LEN,
        shared_weights: str | os.PathLike[str] | None = None,
    ) -> Engine:
        """Load `<out>/<tp>-gpu` (or its parent); any tp. `gelu="erf"` matches HF's exact GELU.
        `shared_weights`: where `shared_weights.write` puts this conversion's base weights: mapped
        from there while they are current (from the conversion itself where it needs no copy), so
        that every process mapping them shares one copy; read from the conversion otherwise."""
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
        ft_dir = layout.find_ft_dir(directory)
        cfg = layout.read_config(ft_dir)
        source = shared.mapped_from(Path(shared_weights), ft_dir, cfg) if shared_weights is not None else None
        if source is not None:
            weights = load_weights(source, shared.mapped_config(cfg), mapped=True)
        else:
            weights = load_weights(ft_dir, cfg)
        prefixes = load_prefixes(ft_dir, cfg)
        return cls(ft_dir, cfg, Transformer(cfg, weights, gelu), prefixes, max_total_len)

    def with_activations(self, activations: Callable[[torch.Tensor, int], torch.Tensor]) -> Engine:
        """The same weights and prefixes, every intermediate passed through `activations`."""
        model = Transformer(self.config, self._model.w, self._model.gelu, activations)
        return Engine(self.directory, self.config, model, self._prefixes, self.max_total_len)

    # ------------------------------------------------------------------------------------------
    # validation

    def _prompt_length(self, task_id: int | None, prefixes: list[torch.Tensor]) -> int:
        if task_id is None:
            return 0
        if isinstance(task_id, bool) or not isinstance(task_id, (int, np.integer)):
            raise ValueError(f"task id must be an integer or None, got {task_id!r}")
        if not 0 <= task_id < len(prefixes):
            raise ValueError(f"unknown task id {task_id}; known task ids: {self.config.tasks.describe()}")
        return int(prefixes[task_id].shape[3])

    def _check_ids(self, ids: Sequence[int], what: str) -> None:
        vocab = self.config.vocab_size
        bad = [t for t in ids if not 0 <= int(t) < vocab]
        if bad:
            raise ValueError(f"{what} holds token ids outside the vocabulary [0, {vocab}): {bad[:5]}")

    def validate(self, requests: Sequence[GenerationRequest]) -> None:
        """Raise ValueError with a clear message for anything FT would crash on or misread."""
        if not requests:
            raise ValueError("empty batch: give at least one request")
        prefixes = self._prefixes
        for i, r in enumerate(requests):
            row = f"request {i}"
            if len(r.input_ids) == 0:
                raise ValueError(f"{row}: empty input_ids; give at least one token")
            self._check_ids(r.input_ids, f"{row}: input_ids")
            p = self._prompt_length(r.task_id, prefixes)
            if r.request_output_len < 1:
                raise ValueError(f"{row}: request_output_len must be at least 1, got {r.request_output_len}")
            total = p + len(r.input_ids) + r.request_output_len
            if total > self.max_total_len:
                raise ValueError(
                    f"{row}: prefix {p} + input {len(r.input_ids)} + output {r.request_output_len} = {total} "
                    f"tokens exceeds the limit of {self.max_total_len}; shorten the input or the output"
                )
            if r.top_k < 0:
                raise ValueError(f"{row}: top_k must be >= 0, got {r.top_k}")
            if not 0.0 <= r.top_p <= 1.0:
                raise ValueError(f"{row}: top_p must be in [0, 1], got {r.top_p}")
            if r.temperature <= 0:
                raise ValueError(f"{row}: temperature must be > 0, got {r.temperature}")
            if r.repetition_penalty <= 0:
                raise ValueError(f"{row}: repetition_penalty must be > 0, got {r.repetition_penalty}")
            for name, words in (("stop_words", r.stop_words), ("bad_words", r.bad_words)):
                self._check_ids([t for w in words for t in w], f"{row}: {name}")

    # ------------------------------------------------------------------------------------------
    # forward passes

    def _prefill(
        self, rows: Sequence[Sequence[int]], task_ids: Sequence[int | None], extra_slots: int
    ) -> tuple[torch.Tensor, KVCache, torch.Tensor, torch.Tensor]:
        """Run every row's input once. Returns hidden [B, T, H], the cache, lengths, prefix lengths."""
        prefixes = self._prefixes
        row_prefixes = [None if t is None else prefixes[t] for t in task_ids]
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        prompt_lengths = torch.tensor(
            [0 if p is None else p.shape[3] for p in row_prefixes], dtype=torch.long
        )
        width = int(lengths.max())
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        positions = prompt_lengths[:, None] + torch.arange(width)[None, :]
        cache = self._model.new_cache(
            len(rows), int(prompt_lengths.max()) + width + extra_slots, row_prefixes
        )
        hidden = self._model.hidden_states(ids, positions, cache)
        return hidden, cache, lengths, prompt_lengths

    def logits(self, input_ids: Sequence[Sequence[int]], task_ids: Sequence[int | None]) -> list[np.ndarray]:
        """Per row float32 [len, vocab]: the logits at every input position (one batched pass)."""
        if len(input_ids) != len(task_ids):
            raise ValueError(f"{len(input_ids)} rows of input_ids but {len(task_ids)} task ids")
        self.validate(
            [GenerationRequest(list(ids), 1, task_id=t) for ids, t in zip(input_ids, task_ids, strict=True)]
        )
        with torch.inference_mode():
            hidden, _, lengths, _ = self._prefill(input_ids, task_ids, 0)
            logits = self._model.logits(hidden)
            return [logits[b, : int(lengths[b])].numpy().copy() for b in range(len(input_ids))]

    def _decode(
        self, requests: Sequence[GenerationRequest], keep_logits: bool = False
    ) -> Iterator[list[_RowState]]:
        """Yield the row states after each decoding step until every row has finished."""
        self.validate(requests)
        cfg = self.config
        states = [
            _RowState(r, cfg.end_id if r.end_id is None else int(r.end_id), [int(t) for t in r.input_ids])
            for r in requests
        ]
        want_log_probs = any(r.return_log_probs for r in requests)
        sampler = Sampler(requests, cfg.vocab_size, want_log_probs, [s.end_id for s in states])
        max_out = max(r.request_output_len for r in requests)
        with torch.inference_mode():
            hidden, cache, lengths, prompt_lengths = self._prefill(
                [r.input_ids for r in requests], [r.task_id for r in requests], max_out
            )
            rows = torch.arange(len(requests))
            logits = self._model.logits(hidden[rows, lengths - 1])
            max_input_len = int(lengths.max())
            next_positions = prompt_lengths + lengths
            for step in range(max_out):
                tokens, token_lp, output_lp = sampler.choose(
                    logits, [s.history for s in states], max_input_len + step, generated=step
                )
                for b, state in enumerate(states):
                    if state.finish_reason is not None:
                        tokens[b] = state.end_id  # FT keeps feeding finished rows their end_id
                        continue
                    token = int(tokens[b])
                    state.generated.append(token)
                    state.history.append(token)
                    if keep_logits:
                        state.step_logits.append(logits[b].numpy().copy())
                    if want_log_probs:
                        state.token_log_probs.append(float(token_lp[b]))
                        state.output_log_probs.append(float(output_lp[b]))
                    if token == state.end_id:
                        state.finish_reason = "end_id"
                    elif ends_with_stop_word(state.history, state.request.stop_words):
                        state.finish_reason = "stop_words"
                    elif len(state.generated) >= state.request.request_output_len:
                        state.finish_reason = "length"
                sampler.observe(tokens)
                yield states
                if all(s.finish_reason is not None for s in states):
                    return
                hidden = self._model.hidden_states(tokens[:, None], next_positions[:, None], cache)
                logits = self._model.logits(hidden[:, 0])
                next_positions = next_positions + 1

    # ------------------------------------------------------------------------------------------
    # public generation API

    def stream(self, requests: Sequence[GenerationRequest]) -> Iterator[Step]:
        """One `Step` per decoding step, the last one with every row finished."""
        counts = [0] * len(requests)
        for states in self._decode(requests):
            new = []
            for b, state in enumerate(states):
                new.append(state.generated[counts[b] :])
                counts[b] = len(state.generated)
            yield Step(new, [s.finish_reason is not None for s in states])

    def _results(self, states: Sequence[_RowState]) -> list[GenerationResult]:
        results = []
        for s in states:
            r = s.request
            results.append(
                GenerationResult(
                    generated_ids=list(s.generated),
                    finish_reason=s.finish_reason or "length",
                    cum_log_prob=float(sum(s.token_log_probs)) if r.return_log_probs else 0.0,
                    output_log_probs=list(s.output_log_probs) if r.return_log_probs else [],
                )
            )
        return results

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One batched run of all requests."""
        states: list[_RowState] = []
        for states in self._decode(requests):  # noqa: B007 - the last yield holds the final states
            pass
        return self._results(states)

    def decode_logits(self, requests: Sequence[GenerationRequest]) -> list[np.ndarray]:
        """Per row float32 [generated, vocab]: the model logits each generated token was chosen from."""
        states: list[_RowState] = []
        for states in self._decode(requests, keep_logits=True):  # noqa: B007
            pass
        return [np.stack(s.step_logits) for s in states]
