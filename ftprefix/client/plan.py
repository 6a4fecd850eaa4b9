"""Turn user prompts into FT requests and FT answers into `Completion`s and `StreamChunk`s.

Nothing here talks to the network: the clients send `Plan.requests()` and hand the answers back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ftprefix import protocol
from ftprefix.client import wire
from ftprefix.client.completion_text import TextReader, cut_at_stop
from ftprefix.client.errors import FtprefixClientError, InvalidRequestError
from ftprefix.client.model_info import ModelInfo
from ftprefix.client.types import (
    Completion,
    GenerationParams,
    Prompt,
    StreamChunk,
    Words,
    is_items,
    token_ids,
)
from ftprefix.text import Tokenizer

Tasks = str | Sequence[str | None] | None
MIN_LENGTH_MISSING = (
    "min_new_tokens needs a model with the min_length input, which this server's model repository "
    "lacks: write it again with this ftprefix (ftprefix triton-repo) and load it"
)


@dataclass(frozen=True)
class Request:
    """One inference call: which rows of the plan it carries and its input tensors."""

    rows: list[int]
    arrays: dict[str, np.ndarray]
    # Triton request parameters; protocol.TASK_NAMES_PARAMETER lets the server catch stale task ids
    parameters: dict[str, str] | None = None


def _task_list(tasks: Tasks, batch: int) -> list[str | None]:
    if tasks is None or isinstance(tasks, str):
        return [tasks] * batch
    if not is_items(tasks):
        raise InvalidRequestError(_not_a_task_name(tasks))
    names = list(tasks)
    if len(names) != batch:
        raise InvalidRequestError(
            f"got {batch} prompts but {len(names)} task names; give one task per prompt"
        )
    for name in names:
        if name is not None and type(name) is not str:
            raise InvalidRequestError(_not_a_task_name(name))
    return names


def _not_a_task_name(value: object) -> str:
    # a request carries a task's id, which only the server's table may give: tasks go by name
    return f"a task is named by a string (None: the base model), got {value!r:.80} ({type(value).__name__})"


def _seed_list(seed: int | Sequence[int], batch: int) -> list[int | None]:
    """Each row's own seed where the call gave one per prompt; None where all share `seed`."""
    if isinstance(seed, int):
        return [None] * batch
    if len(seed) != batch:
        raise InvalidRequestError(f"got {batch} prompts but {len(seed)} seeds; give one seed per prompt")
    return list(seed)


@dataclass(frozen=True)
class Prompts:
    """A call's prompts, checked before any connection: each one's token ids, or None for text."""

    given: list[Prompt]
    ids: list[list[int] | None]

    @classmethod
    def of(cls, prompts: Sequence[Prompt] | Prompts) -> Prompts:
        if isinstance(prompts, Prompts):
            return prompts
        if isinstance(prompts, str):  # its characters would each be a prompt
            raise InvalidRequestError("prompts is one string: give a list of prompts (one: generate)")
        given = list(prompts)
        if not given:
            raise InvalidRequestError("no prompts given")
        return cls(given, [token_ids(p) for p in given])

    @property
    def has_text(self) -> bool:
        return any(ids is None for ids in self.ids)


def _strings(words: Words | None) -> list[str]:
    return [w for w in words or [] if isinstance(w, str)]


@dataclass
class Plan:
    """A batch of prompts resolved against the server: tokenised, task ids looked up, validated."""

    info: ModelInfo  # the model the requests go to (`fastertransformer` or `ensemble`)
    tokenizer: Tokenizer | None
    params: GenerationParams
    tasks: list[str | None]
    rows: list[wire.Row]
    stop_strings: list[str] = field(default_factory=list)
    text_prompts: list[str] | None = None  # set when the ensemble does the tokenising
    end_id: int | None = None

    @classmethod
    def build(
        cls,
        prompts: Sequence[Prompt] | Prompts,
        tasks: Tasks,
        params: GenerationParams,
        info: ModelInfo,
        tokenizer: Tokenizer | None,
        ensemble: ModelInfo | None = None,
    ) -> Plan:
        """Validate everything before a byte is sent. With `ensemble`, text goes to it as text."""
        checked = Prompts.of(prompts)
        prompts, token_prompts = checked.given, checked.ids
        names = _task_list(tasks, len(prompts))
        task_ids = [info.task_id(name) for name in names]  # UnknownTaskError before any request
        seeds = _seed_list(params.seed, len(prompts))
        if params.min_new_tokens and protocol.MIN_LENGTH not in info.inputs:
            raise InvalidRequestError(MIN_LENGTH_MISSING)
        words = [*(params.stop or []), *(params.bad_words or [])]
        has_text = checked.has_text or any(isinstance(w, str) for w in words)
        if ensemble is not None and tokenizer is None and has_text:
            if any(ids is not None for ids in token_prompts) or not all(isinstance(w, str) for w in words):
                raise InvalidRequestError(
                    "token ids need the fastertransformer model; pass prompts and stop words as text"
                )
            if params.min_new_tokens and protocol.MIN_LENGTH not in ensemble.inputs:
                raise InvalidRequestError(MIN_LENGTH_MISSING)
            texts = [str(p) for p in prompts]
            if any(not t for t in texts):
                raise InvalidRequestError("empty prompt; FT needs at least one input token")
            rows = [wire.Row([], task_id=t, seed=seed) for t, seed in zip(task_ids, seeds, strict=True)]
            # the ensemble serves the fastertransformer model's tasks
            target = ModelInfo(
                ensemble.name,
                ensemble.inputs,
                ensemble.outputs,
                info.decoupled,
                ensemble.max_batch_size,
                info.tasks,
            )
            return cls(target, None, params, names, rows, _strings(params.stop), texts)
        if tokenizer is None and has_text:
            raise FtprefixClientError(
                "text needs a tokenizer: pass tokenizer=HF_MODEL_DIR (--tokenizer), or serve a model "
                "repository with the text `ensemble` (ftprefix serve --tokenizer HF_MODEL_DIR)"
            )

        def word_ids(item: str | list[int]) -> list[int]:
            if isinstance(item, str):
                assert tokenizer is not None  # checked above: text without a tokenizer was refused
                return tokenizer.encode_word(item)
            return item  # checked by GenerationParams

        stop_ids = [w for w in map(word_ids, params.stop or []) if w]
        bad_ids = [w for w in map(word_ids, params.bad_words or []) if w]
        if info.vocab_size is not None:
            for ids in (*(p for p in token_prompts if p is not None), *stop_ids, *bad_ids):
                if ids and max(ids) >= info.vocab_size:
                    vocab = f"0 to {info.vocab_size - 1}"
                    raise InvalidRequestError(f"token id {max(ids)} is not in the vocabulary ({vocab})")
        end_id = params.end_id if params.end_id is not None else info.end_id
        if end_id is None and tokenizer is not None:
            end_id = tokenizer.eos_id
        if end_id is None:
            raise FtprefixClientError(
                "the model's end token is unknown (the server publishes no end_id and there is no "
                "tokenizer): pass end_id=... or tokenizer=HF_MODEL_DIR"
            )
        rows = []
        for prompt, given_ids, task_id, seed in zip(prompts, token_prompts, task_ids, seeds, strict=True):
            if given_ids is not None:
                input_ids = given_ids
            else:
                assert tokenizer is not None  # checked above: text without a tokenizer was refused
                input_ids = tokenizer.encode(str(prompt))
            if not input_ids:
                raise InvalidRequestError("empty prompt; FT needs at least one input token")
            rows.append(wire.Row(input_ids, task_id, stop_ids, bad_ids, seed))
        return cls(info, tokenizer, params, names, rows, _strings(params.stop), end_id=end_id)

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
                [self.rows[i] for i in group],
                self.stop_strings,
                _strings(self.params.bad_words),
                self.params,
                self.info.inputs,
            )
        rows = [self.rows[i] for i in group]
        return wire.ft_inputs(
            rows, self.params, self.info.inputs, end_id=self.end_id, pad_id=self.end_id or 0
        )

    def outputs(self) -> list[str]:
        if self.text_prompts is not None:
            return [protocol.TEXT_OUTPUT]
        log_probs = [protocol.OUTPUT_LOG_PROBS] if self.params.return_log_probs else []
        return [protocol.OUTPUT_IDS, protocol.SEQUENCE_LENGTH, *log_probs]

    def row_spec(self, index: int) -> wire.RowSpec:
        row = self.rows[index]
        return wire.RowSpec(len(row.input_ids), self.params.max_new_tokens, self.end_id, row.stop_words)

    def text_reader(self, index: int) -> TextReader | None:
        if self.tokenizer is None:
            return None
        return TextReader(self.tokenizer, self.rows[index].input_ids, self.stop_strings)

    def completion(
        self, index: int, answer: wire.RowAnswer, log_probs: np.ndarray | None = None
    ) -> Completion:
        """The result of row `index` read from FT's output tensors: the text the prompt continues
        with, cut (with its tokens) at the first stop string. `log_probs`: the row's output_log_probs."""
        reader = self.text_reader(index)
        row = reader.read(answer.tokens) if reader is not None else None
        stopped = row is not None and row.stopped
        tokens = row.tokens if row is not None else answer.tokens
        chosen = texts = None
        if log_probs is not None:
            chosen = [float(v) for v in np.asarray(log_probs).reshape(-1)[: len(tokens)]]
            if reader is not None and row is not None:
                texts = reader.token_texts(tokens, row.text)
        return Completion(
            text=row.text if row is not None else None,
            token_ids=tokens,
            finish_reason="stop_words" if stopped else answer.finish_reason,
            task=self.tasks[index],
            prompt_token_count=len(self.rows[index].input_ids),
            log_probs=chosen,
            token_texts=texts,
        )

    def text_completion(self, index: int, text: str) -> Completion:
        """The result of row `index` from the ensemble's text (no token ids come back)."""
        cut, stopped = cut_at_stop(text, self.stop_strings)
        return Completion(
            text=cut, token_ids=[], finish_reason="stop_words" if stopped else None, task=self.tasks[index]
        )


class Collector:
    """Reads the answer to one `Request`: its last response (FT sends the whole result in each)."""

    def __init__(self, plan: Plan, request: Request) -> None:
        self.plan = plan
        self.rows = request.rows

    def completions(self, outputs: dict[str, np.ndarray]) -> list[tuple[int, Completion]]:
        """(row index in the plan, its completion) for every row of the request."""
        plan = self.plan
        if plan.text_prompts is not None:
            texts = wire.ensemble_texts(outputs[protocol.TEXT_OUTPUT], len(self.rows))
            return [(row, plan.text_completion(row, t)) for row, t in zip(self.rows, texts, strict=True)]
        answers = wire.read_rows(
            outputs[protocol.OUTPUT_IDS],
            outputs[protocol.SEQUENCE_LENGTH],
            [plan.row_spec(i) for i in self.rows],
            final=True,
        )
        log_probs = outputs.get(protocol.OUTPUT_LOG_PROBS)
        return [
            (row, plan.completion(row, a, None if log_probs is None else np.asarray(log_probs)[b, 0]))
            for b, (row, a) in enumerate(zip(self.rows, answers, strict=True))
        ]


class ChunkMaker:
    """Builds `StreamChunk`s for a single-row stream from FT's cumulative responses."""

    def __init__(self, plan: Plan) -> None:
        self.spec = plan.row_spec(0)
        self.reader = plan.text_reader(0)
        self.sent = 0  # how many tokens the chunks so far carried
        self.text = ""
        self.finished = False

    def update(self, outputs: dict[str, np.ndarray], final: bool) -> StreamChunk | None:
        """A chunk for what this response adds, or None if it adds nothing. `final`: the stream's
        last response (read again with final=True once the stream has ended). Concatenated, the
        chunks' tokens and texts equal the completion's."""
        if self.finished:
            return None
        (answer,) = wire.read_rows(
            outputs[protocol.OUTPUT_IDS], outputs[protocol.SEQUENCE_LENGTH], [self.spec], final
        )
        reason = answer.finish_reason
        tokens, text = answer.tokens, None
        if self.reader is not None:
            row = self.reader.read(tokens) if reason is not None else self.reader.visible(tokens)
            if row.stopped:
                reason = "stop_words"
            tokens = row.tokens
            # a visible text that is not a continuation of what was shown waits for more tokens
            text = row.text[len(self.text) :] if row.text.startswith(self.text) else ""
        fresh = tokens[self.sent :]
        if not fresh and not text and reason is None:
            return None
        self.sent += len(fresh)
        if text:
            self.text += text
        self.finished = reason is not None
        return StreamChunk(
            token_ids=fresh,
            text=text,
            finish_reason=reason,
            prompt_token_count=self.spec.input_length,
        )
