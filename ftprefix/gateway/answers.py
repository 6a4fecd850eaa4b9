"""The gateway's answers in OpenAI's shapes (openai-python's `Completion`, `ChatCompletion` and their
chunks), encoded to bytes here.

A stream sends one event per piece of text: the part of each chunk that does not change within a
request (id, object, created, model) is encoded once, so a chunk costs the encoding of its text.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from ftprefix.client import Completion

DONE = b"data: [DONE]\n\n"
# json.dumps with options builds an encoder at every call (1.5 against 0.25 us for a streamed piece
# of text); one encoder, made once, writes the same bytes.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def finish_reason(reason: str | None) -> str:
    """FT's reasons in OpenAI's words: an end token or stop word is "stop", the limit "length"."""
    return "length" if reason == "length" else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def dumps(body: Any) -> bytes:
    return _JSON.encode(body).encode("utf-8")


def _reason_json(reason: str | None) -> bytes:
    """A chunk's finish_reason: null on every chunk but the last (the encoder's general path,
    which a None takes, costs seven times its path for a string)."""
    return b"null" if reason is None else dumps(reason)


def event(body: Any) -> bytes:
    """One server-sent event of JSON data."""
    return b"data: " + dumps(body) + b"\n\n"


def _text_offsets(pieces: Sequence[str]) -> list[int]:
    offsets, at = [], 0
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    return offsets


class AnswerFormat:
    """One request's answers in OpenAI's shape: whole (`full`) or streamed (`opening`, `chunk`,
    `usage_chunk`), each as bytes."""

    object_name = "text_completion"
    chunk_name = "text_completion"
    id_prefix = "cmpl"

    def __init__(self, model: str) -> None:
        self.model = model
        # 32 random hex digits, as long as a uuid4's hex, without building a UUID (a sixth of the cost)
        self.id = f"{self.id_prefix}-{os.urandom(16).hex()}"
        self.created = int(time.time())

    @functools.cached_property
    def _chunk_head(self) -> bytes:
        """What every chunk of a stream starts with; built at its first chunk."""
        head = {"id": self.id, "object": self.chunk_name, "created": self.created, "model": self.model}
        return b"data: " + dumps(head)[:-1] + b',"choices":[{"index":'

    def _body(self, name: str, choices: list[dict[str, Any]], use: dict[str, int] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "object": name, "created": self.created, "model": self.model}
        body["choices"] = choices
        if use is not None:
            body["usage"] = use
        return body

    def full(self, done: Sequence[Completion], use: dict[str, int]) -> bytes:
        choices = [self.choice(i, c) for i, c in enumerate(done)]
        return dumps(self._body(self.object_name, choices, use))

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

    def opening(self, index: int, use: dict[str, int] | None = None) -> bytes | None:
        return None

    def _choice_tail(self, text: str, reason: str | None) -> bytes:
        return b',"text":' + dumps(text) + b',"logprobs":null,"finish_reason":' + _reason_json(reason)

    def chunk(self, index: int, text: str, reason: str | None, use: dict[str, int] | None = None) -> bytes:
        """The event of one piece of streamed text (and the finish reason with the last); `use`,
        the usage so far, when the request asked for it on every chunk."""
        end = b"}]}\n\n" if use is None else b'}],"usage":' + dumps(use) + b"}\n\n"
        return self._chunk_head + str(index).encode() + self._choice_tail(text, reason) + end

    def usage_chunk(self, use: dict[str, int]) -> bytes:
        return event(self._body(self.chunk_name, [], use))


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

    def opening(self, index: int, use: dict[str, int] | None = None) -> bytes | None:
        choice = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
        return event(self._body(self.chunk_name, [{**choice, "finish_reason": None}], use))

    def _choice_tail(self, text: str, reason: str | None) -> bytes:
        delta = b'{"content":' + dumps(text) + b"}" if text else b"{}"
        return b',"delta":' + delta + b',"logprobs":null,"finish_reason":' + _reason_json(reason)
