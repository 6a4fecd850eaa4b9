"""Turn user prompts into FT requests and FT answers into `Completion`s, shared by both clients.

Nothing here talks to the network: the clients send `Plan.requests()` and hand the answers back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ftprefix import protocol
from ftprefix.client import wire
from ftprefix.client.errors import FtprefixClientError, InvalidRequestError
from ftprefix.client.model_info import ModelInfo
from ftprefix.client.tokenizer import ClientTokenizer
from ftprefix.client.types import Completion, FinishReason, SamplingParams, StreamChunk

Prompt = str | Sequence[int]
Stop = str | Sequence[int]


@dataclass(frozen=True)
class Request:
    """One inference call: which rows of the plan it carries and its input tensors."""

    rows: list[int]
    arrays: dict[str, np.ndarray]
    # Triton request parameters; protocol.TASK_NAMES_PARAMETER lets the server catch stale task ids
    parameters: dict[str, str] | None = None


def _task_list(tasks: str | Sequence[str | None] | None, batch: int) -> list[str | None]:
    if tasks is None or isinstance(tasks, str):
        return [tasks] * batch
    names = list(tasks)
    if len(names) != batch:
        raise InvalidRequestError(
            f"got {batch} prompts but {len(names)} task names; give one task per prompt"
        )
    return names


def _as_ids(prompt: Prompt) -> list[int] | None:
    if isinstance(prompt, str):
        return None
    ids = [int(t) for t in prompt]
    if any(t < 0 or t >= 2**32 for t in ids):
        raise InvalidRequestError("token ids must be non-negative 32-bit integers")
    return ids


@dataclass
class Plan:
    """A batch of prompts resolved against the server: tokenised, task ids looked up, validated."""

    info: ModelInfo
    tokenizer: ClientTokenizer | None
    params: SamplingParams
    tasks: list[str | None]
    rows: list[wire.Row]
    stop_strings: list[str] = field(default_factory=list)
    text_prompts: list[str] | None = None  # set when the ensemble does the tokenising
    end_id: int | None = None

    @classmethod
    def build(
        cls,
        prompts: Sequence[Prompt],
        tasks: str | Sequence[str | None] | None,
        params: SamplingParams,
        stop: Sequence[Stop] | None,
        info: ModelInfo,
        tokenizer: ClientTokenizer | None,
        use_ensemble: bool,
    ) -> Plan:
        """Validate everything before a byte is sent; `use_ensemble` sends text prompts as text."""
        params.check()
        prompts = list(prompts)
        if not prompts:
            raise InvalidRequestError("no prompts given")
        names = _task_list(tasks, len(prompts))
        task_ids = [info.task_id(name) for name in names]  # UnknownTaskError before any request
        stops = list(stop or [])
        stop_strings = [s for s in stops if isinstance(s, str)]
        token_prompts = [_as_ids(p) for p in prompts]
        if use_ensemble:
            if any(ids is not None for ids in token_prompts) or len(stop_strings) != len(stops):
                raise InvalidRequestError(
                    "token ids need the fastertransformer model; pass prompts and stop words as text"
                )
            texts = [str(p) for p in prompts]
            if any(not t for t in texts):
                raise InvalidRequestError("empty prompt; FT needs at least one input token")
            rows = [wire.Row([], task_id=t) for t in task_ids]
            return cls(info, None, params, names, rows, stop_strings, text_prompts=texts)
        if tokenizer is None and (any(ids is None for ids in token_prompts) or stop_strings):
            raise FtprefixClientError(
                "text needs a tokenizer: pass tokenizer=HF_MODEL_DIR (--tokenizer), or serve a model "
                "repository with the text `ensemble` (ftprefix serve --tokenizer HF_MODEL_DIR)"
            )

        def encode(text: str) -> list[int]:
            assert tokenizer is not None  # checked above: text without a tokenizer was refused
            return tokenizer.encode(text)

        stop_ids = [encode(s) if isinstance(s, str) else _as_ids(s) or [] for s in stops]
        rows = []
        for prompt, ids, task_id in zip(prompts, token_prompts, task_ids, strict=True):
            input_ids = ids if ids is not None else encode(str(prompt))
            if not input_ids:
                raise InvalidRequestError("empty prompt; FT needs at least one input token")
            rows.append(wire.Row(input_ids, task_id=task_id, stop_words=[w for w in stop_ids if w]))
        end_id = tokenizer.eos_id if tokenizer is not None else None
        return cls(info, tokenizer, params, names, rows, stop_strings, end_id=end_id)

    @property
    def input_lengths(self) -> list[int]:
        return [len(row.input_ids) for row in self.rows]

    def requests(self) -> list[Request]:
        """One request per group of rows FT can take together.

        FT has no task id meaning "no prefix", so base-model rows and task rows go in separate
        requests; each request holds at most max_batch_size rows.
        """
        limit = self.info.max_batch_size if self.info.max_batch_size > 0 else len(self.rows)
        groups: list[list[int]] = []
        for with_task in (False, True):
            members = [i for i, row in enumerate(self.rows) if (row.task_id is not None) == with_task]
            groups += [members[s : s + limit] for s in range(0, len(members), limit)]
        return [Request(group, self._arrays(group), self._parameters(group)) for group in groups]

    def _parameters(self, group: list[int]) -> dict[str, str] | None:
        names = [self.tasks[i] for i in group]
        if self.text_prompts is not None or all(n is None for n in names):
            return None  # the ensemble's steps do not see request parameters; base rows name no task
        return {protocol.TASK_NAMES_PARAMETER: json.dumps(names)}

    def _arrays(self, group: list[int]) -> dict[str, np.ndarray]:
        if self.text_prompts is not None:
            return wire.ensemble_inputs(
                [self.text_prompts[i] for i in group],
                [self.rows[i].task_id for i in group],
                self.stop_strings,
                self.params,
                self.info.inputs,
            )
        pad = self.end_id if self.end_id is not None else 0
        return wire.ft_inputs([self.rows[i] for i in group], self.params, self.info.inputs, pad_id=pad)

    def finish_reason(self, index: int, generated: Sequence[int]) -> FinishReason:
        return wire.finish_reason(
            generated, self.params.max_new_tokens, self.end_id, self.rows[index].stop_words
        )

    def completion(self, index: int, generated: list[int]) -> Completion:
        """The result of row `index` from its generated token ids (FT model path)."""
        text = None
        if self.tokenizer is not None:
            text = wire.strip_stop_text(self.tokenizer.decode(generated), self.stop_strings)
        return Completion(
            text=text,
            token_ids=generated,
            finish_reason=self.finish_reason(index, generated),
            task=self.tasks[index],
            prompt_token_count=len(self.rows[index].input_ids),
        )

    def text_completion(self, index: int, text: str) -> Completion:
        """The result of row `index` from the ensemble's text (no token ids come back)."""
        stripped = wire.strip_stop_text(text, self.stop_strings)
        reason: FinishReason | None = "stop_words" if stripped != text else None
        return Completion(text=stripped, token_ids=[], finish_reason=reason, task=self.tasks[index])


class Collector:
    """Gathers the responses to one `Request` (one, or one per step from a decoupled model)."""

    def __init__(self, plan: Plan, request: Request) -> None:
        self.plan = plan
        self.rows = request.rows
        width = max(plan.input_lengths[i] for i in request.rows)  # the padded width sent
        self.state = wire.StreamState(len(request.rows), width)
        self.texts: list[str] | None = None

    def add(self, outputs: dict[str, np.ndarray]) -> None:
        """Record one response; each carries the whole sequence so far, as FT sends it."""
        if self.plan.text_prompts is not None:
            prompts = [self.plan.text_prompts[i] for i in self.rows]
            self.texts = wire.ensemble_texts(outputs[protocol.TEXT_OUTPUT], prompts)
        else:
            self.state.update(outputs[protocol.OUTPUT_IDS], outputs[protocol.SEQUENCE_LENGTH])

    def completions(self) -> list[tuple[int, Completion]]:
        """(row index in the plan, its completion) for every row of the request."""
        if self.plan.text_prompts is not None:
            texts = self.texts or [""] * len(self.rows)
            return [(row, self.plan.text_completion(row, t)) for row, t in zip(self.rows, texts, strict=True)]
        return [
            (row, self.plan.completion(row, ids))
            for row, ids in zip(self.rows, self.state.generated, strict=True)
        ]


class ChunkMaker:
    """Builds `StreamChunk`s for a single-row stream, decoding text incrementally."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.state = wire.StreamState(1, plan.input_lengths[0])
        self.emitted_text = ""
        self.finished = False

    def _text_delta(self) -> str | None:
        if self.plan.tokenizer is None:
            return None
        text = self.plan.tokenizer.decode(self.state.generated[0])
        # A BPE token may end inside a multi-byte character: wait for the rest before emitting it.
        if text.endswith("\ufffd") or not text.startswith(self.emitted_text):
            return ""
        delta, self.emitted_text = text[len(self.emitted_text) :], text
        return delta

    def _finished_now(self, generated: Sequence[int]) -> bool:
        row = self.plan.rows[0]
        return (
            len(generated) >= self.plan.params.max_new_tokens
            or (self.plan.end_id is not None and bool(generated) and generated[-1] == self.plan.end_id)
            or any(list(generated[-len(w) :]) == w for w in row.stop_words)
        )

    def update(self, output_ids: np.ndarray, sequence_length: np.ndarray) -> StreamChunk | None:
        """A chunk for the tokens new in this response, or None if it brought none."""
        fresh = self.state.update(output_ids, sequence_length)[0]
        if not fresh:
            return None
        generated = self.state.generated[0]
        reason = None
        if self._finished_now(generated):
            self.finished = True
            reason = self.plan.finish_reason(0, generated)
        return StreamChunk(token_ids=fresh, text=self._text_delta(), finish_reason=reason)

    def close(self) -> StreamChunk | None:
        """The closing chunk when the stream ended without a recognisable last token."""
        if self.finished:
            return None
        self.finished = True
        reason = self.plan.finish_reason(0, self.state.generated[0])
        tail = None
        if self.plan.tokenizer is not None:
            tail = self.plan.tokenizer.decode(self.state.generated[0])[len(self.emitted_text) :]
        return StreamChunk(token_ids=[], text=tail, finish_reason=reason)
