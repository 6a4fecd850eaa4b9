"""The OpenAI completions and chat APIs as the gateway accepts them, and its answers (openai-python's shapes).

Fields OpenAI defines but FT cannot honour are accepted at their neutral values and refused
otherwise, naming the parameter, as OpenAI's own API refuses what it does not support.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from ftprefix.client import Completion

MAX_STOP = 4  # as OpenAI


class ApiError(Exception):
    """An error answered with OpenAI's body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None, kind: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


def bad_param(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


NO_ALTERNATIVES = (
    "FasterTransformer returns the chosen tokens' log probabilities only, no alternatives: ask for {ask}"
)


class _Sampling(BaseModel):
    """What completions and chat share."""

    model_config = ConfigDict(extra="ignore")  # unknown fields are ignored, as OpenAI's API ignores them

    model: str
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    n: int | None = 1
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def _refuse(self, unsupported: Sequence[tuple[str, Any, tuple[Any, ...]]]) -> None:
        for param, value, neutral in (
            ("n", self.n, (None, 1)),
            ("presence_penalty", self.presence_penalty, (None, 0, 0.0)),
            ("frequency_penalty", self.frequency_penalty, (None, 0, 0.0)),
            ("logit_bias", self.logit_bias, (None, {})),
            *unsupported,
        ):
            if value not in neutral:
                raise bad_param(param, f"{param}={value!r} is not supported by this server")

    def _options(self, max_tokens: int, log_probs: bool) -> dict[str, Any]:
        if max_tokens < 1:
            raise bad_param("max_tokens", f"max_tokens must be at least 1, got {max_tokens}")
        temperature = 1.0 if self.temperature is None else self.temperature
        if not 0 <= temperature <= 2:
            raise bad_param("temperature", f"temperature must be within [0, 2], got {temperature}")
        top_p = 1.0 if self.top_p is None else self.top_p
        if not 0 < top_p <= 1:
            raise bad_param("top_p", f"top_p must be within (0, 1], got {top_p}")
        stops = self.stops()
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise bad_param("stop", f"stop takes up to {MAX_STOP} non-empty strings")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise bad_param("seed", f"seed must be a non-negative 64-bit integer, got {self.seed}")
        if log_probs and self.stream:
            raise bad_param(
                "stream", "log probabilities come with the whole answer: ask for them without stream"
            )
        options: dict[str, Any] = {"max_new_tokens": max_tokens, "stop": stops or None}
        if log_probs:
            options["return_log_probs"] = True
        if temperature > 0:
            # FT samples from the top_p nucleus at this temperature; OpenAI samples unless told 0
            seed = self.seed if self.seed is not None else secrets.randbits(63)
            options.update(temperature=temperature, top_p=top_p, seed=seed)
        return options  # temperature 0: FT's greedy decoding (top_k = top_p = 0)


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    echo: bool | None = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request (a list of them is one batch)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def generate_options(self) -> dict[str, Any]:
        """The client options for this request, or ApiError(400) naming what cannot be served."""
        self._refuse(
            [
                ("best_of", self.best_of, (None, 1)),
                ("echo", self.echo, (None, False)),
                ("suffix", self.suffix, (None, "")),
            ]
        )
        if self.logprobs is not None and self.logprobs != 0:
            raise bad_param("logprobs", NO_ALTERNATIVES.format(ask="logprobs=0"))
        if not self.prompts() or any(len(p) == 0 for p in self.prompts()):
            raise bad_param("prompt", "prompt must not be empty")
        return self._options(16 if self.max_tokens is None else self.max_tokens, self.logprobs == 0)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None

    def message_dicts(self) -> list[dict[str, Any]]:
        """The messages as chat templates read them: content a string (text parts joined)."""
        out = []
        for i, message in enumerate(self.messages):
            content = message.content
            if isinstance(content, list):
                if any(part.get("type") != "text" for part in content):
                    raise bad_param(f"messages[{i}].content", "only text content parts can be served")
                content = "".join(str(part.get("text", "")) for part in content)
            out.append({**message.model_dump(exclude_none=True), "content": content or ""})
        return out

    def generate_options(self) -> dict[str, Any]:
        self._refuse(
            [
                ("tools", self.tools, (None, [])),
                ("response_format", (self.response_format or {}).get("type"), (None, "text")),
            ]
        )
        if self.top_logprobs:
            raise bad_param("top_logprobs", NO_ALTERNATIVES.format(ask="logprobs=true without top_logprobs"))
        if not self.messages:
            raise bad_param("messages", "messages must not be empty")
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return self._options(16 if limit is None else limit, bool(self.logprobs))


# -- answers ------------------------------------------------------------------------------------


def finish_reason(reason: str | None) -> str:
    """FT's reasons in OpenAI's words: an end token or stop word is "stop", the limit "length"."""
    return "length" if reason == "length" else "stop"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _text_offsets(pieces: Sequence[str]) -> list[int]:
    offsets, at = [], 0
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    return offsets


class AnswerFormat:
    """One request's answers in OpenAI's shape: whole (`full`) or streamed (`opening`, `chunk`,
    `usage_chunk`)."""

    object_name = "text_completion"
    chunk_name = "text_completion"
    id_prefix = "cmpl"

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = now()

    def _body(self, name: str, choices: list[dict[str, Any]], use: dict[str, int] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "object": name, "created": self.created, "model": self.model}
        body["choices"] = choices
        if use is not None:
            body["usage"] = use
        return body

    def full(self, done: Sequence[Completion], use: dict[str, int]) -> dict[str, Any]:
        choices = [self.choice(i, c) for i, c in enumerate(done)]
        return self._body(self.object_name, choices, use)

    def choice(self, index: int, done: Completion) -> dict[str, Any]:
        logprobs = None
        if done.log_probs is not None and done.token_texts is not None:
            logprobs = {
                "tokens": done.token_texts,
                "token_logprobs": done.log_probs,
                "top_logprobs": None,
                "text_offset": _text_offsets(done.token_texts),
            }
        reason = finish_reason(done.finish_reason)
        return {"index": index, "text": done.text or "", "logprobs": logprobs, "finish_reason": reason}

    def opening(self, index: int) -> dict[str, Any] | None:
        return None

    def chunk(self, index: int, text: str, reason: str | None) -> dict[str, Any]:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
        return self._body(self.chunk_name, [choice], None)

    def usage_chunk(self, use: dict[str, int]) -> dict[str, Any]:
        return self._body(self.chunk_name, [], use)


class ChatAnswerFormat(AnswerFormat):
    object_name = "chat.completion"
    chunk_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def choice(self, index: int, done: Completion) -> dict[str, Any]:
        logprobs = None
        if done.log_probs is not None and done.token_texts is not None:
            logprobs = {
                "content": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8")), "top_logprobs": []}
                    for t, lp in zip(done.token_texts, done.log_probs, strict=True)
                ]
            }
        message = {"role": "assistant", "content": done.text or ""}
        reason = finish_reason(done.finish_reason)
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": reason}

    def opening(self, index: int) -> dict[str, Any] | None:
        choice = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
        return self._body(self.chunk_name, [{**choice, "finish_reason": None}], None)

    def chunk(self, index: int, text: str, reason: str | None) -> dict[str, Any]:
        delta = {"content": text} if text else {}
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
        return self._body(self.chunk_name, [choice], None)


def answer_format(body: CompletionRequest | ChatRequest) -> AnswerFormat:
    return ChatAnswerFormat(body.model) if isinstance(body, ChatRequest) else AnswerFormat(body.model)
