"""The OpenAI completions API as the gateway accepts it, and its answers (openai-python's shapes).

Fields OpenAI defines but FT cannot honour are accepted at their neutral values and refused
otherwise, naming the parameter, as OpenAI's own API refuses what it does not support.
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict

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


class CompletionRequest(BaseModel):
    """POST /v1/completions. Unknown fields are ignored, as OpenAI's API ignores them."""

    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    n: int | None = 1
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    echo: bool | None = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None

    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request (a list of them is one batch)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def generate_options(self) -> dict[str, Any]:
        """The client options for this request, or ApiError(400) naming what cannot be served."""
        for param, value, neutral in (
            ("n", self.n, (None, 1)),
            ("best_of", self.best_of, (None, 1)),
            ("echo", self.echo, (None, False)),
            ("logprobs", self.logprobs, (None,)),
            ("suffix", self.suffix, (None, "")),
            ("presence_penalty", self.presence_penalty, (None, 0, 0.0)),
            ("frequency_penalty", self.frequency_penalty, (None, 0, 0.0)),
            ("logit_bias", self.logit_bias, (None, {})),
        ):
            if value not in neutral:
                raise bad_param(param, f"{param}={value!r} is not supported by this server")
        if not self.prompts() or any(len(p) == 0 for p in self.prompts()):
            raise bad_param("prompt", "prompt must not be empty")
        max_tokens = 16 if self.max_tokens is None else self.max_tokens
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
        options: dict[str, Any] = {"max_new_tokens": max_tokens, "stop": stops or None}
        if temperature > 0:
            # FT samples from the top_p nucleus at this temperature; OpenAI samples unless told 0
            seed = self.seed if self.seed is not None else secrets.randbits(63)
            options.update(temperature=temperature, top_p=top_p, seed=seed)
        return options  # temperature 0: FT's greedy decoding (top_k = top_p = 0)

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


def finish_reason(reason: str | None) -> str:
    """FT's reasons in OpenAI's words: an end token or stop word is "stop", the limit "length"."""
    return "length" if reason == "length" else "stop"


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def choice(index: int, text: str, reason: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}


def completion(cid: str, created: int, model: str, choices: list[dict[str, Any]], use: dict | None) -> dict:
    body: dict[str, Any] = {"id": cid, "object": "text_completion", "created": created, "model": model}
    body["choices"] = choices
    if use is not None:
        body["usage"] = use
    return body
