"""The OpenAI API as real clients and fuzzers use it, against a real `ftprefix serve` (streaming):
strict requests with OpenAI's error bodies, streams that always end the same way, vLLM's sampling
extensions honoured, and `/openapi.json` that says what the gateway does (held to it by
schemathesis). Expected tokens come from Hugging Face (tests/hf_reference.py) or from the
`fastertransformer` model called with raw tritonclient, never from the gateway's own client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from gateway_support import gateway_log, metric_delta, metric_samples
from hf_reference import HFReference
from serving_support import convert_toy, rows_counted, tensors
from transformers import AutoTokenizer

from ftprefix import protocol
from ftprefix.client import (
    InferenceError,
    InvalidRequestError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerUnavailableError,
)
from ftprefix.gateway.app import GatewaySettings
from ftprefix.gateway.errors import from_client_error
from ftprefix.gateway.run import make_server, start_in_thread
from ftprefix.serving.server import EmbeddedServer, free_port

TASKS = {"smile": 3, "shout": 5}
BASE = "toy-base"
KEY = "key-for-the-api-tests"
PROMPT = "The quick brown fox"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    """A toy conversion whose end token is one the base model generates early for PROMPT, so its
    answers stop after a few tokens unless told otherwise (min_tokens, ignore_eos)."""
    root = tmp_path_factory.mktemp("api")
    converted = convert_toy(root, TASKS, seed=5)
    tokenizer = AutoTokenizer.from_pretrained(str(converted["hf"]))
    ids = tokenizer.encode(PROMPT, add_special_tokens=False)
    reference = HFReference(converted["hf"], {})
    greedy, _ = reference.greedy(ids, None, 12)
    stop_at = next(k for k in range(1, len(greedy)) if greedy[k] not in greedy[:k])
    config = converted["ft"] / "1-gpu" / "config.ini"
    text = config.read_text()
    assert "end_id = " in text
    lines = [
        f"end_id = {greedy[stop_at]}" if line.startswith("end_id = ") else line for line in text.splitlines()
    ]
    config.write_text("\n".join(lines) + "\n")
    return {
        **converted,
        "tokenizer": tokenizer,
        "ids": ids,
        "reference": reference,
        "end_id": greedy[stop_at],
        "stops_after": stop_at + 1,
    }


@pytest.fixture(scope="module")
def triton(model):
    with EmbeddedServer(model["ft"], streaming=True, watch_interval=None, stop_timeout=0) as server:
        yield server


def _gateway(triton_url: str, hf: Path, tokenizer=None, **settings):
    server = make_server(
        GatewaySettings(triton_url, hf, BASE, api_keys=(KEY,), **settings),
        "127.0.0.1",
        free_port(),
        tokenizer=tokenizer,
    )
    start_in_thread(server)
    return server, f"http://127.0.0.1:{server.config.port}"


TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


@pytest.fixture(scope="module")
def gateway(triton, model, tmp_path_factory):
    template = tmp_path_factory.mktemp("template") / "chat.jinja"
    template.write_text(TEMPLATE)
    server, url = _gateway(triton.grpc_url, model["hf"], max_model_len=1024, chat_template=template)
    try:
        yield url
    finally:
        server.should_exit = True


def _post(url: str, body: bytes | dict, path: str = "/v1/completions", **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        url + path,
        content=content,
        headers={**AUTH, "Content-Type": "application/json", **headers},
        timeout=120,
    )


def _events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]


def _error(message: str, param: str | None, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def _streamed(body: bytes) -> bytes:
    """The same request with "stream": true (the body is an object: add the field at its end)."""
    return body.rstrip()[:-1] + b', "stream": true}'


UNICODE = "not valid Unicode text (a lone surrogate); send text as UTF-8"
PROMPT_SHAPE = "a non-empty string, a list of them, a list of token ids or a list of token-id lists"
BAD_COMPLETIONS = [
    (b'{"model": "shout", "prompt": "\\ud800"}', _error(f"prompt: {UNICODE}", "prompt", "invalid_unicode")),
    (
        b'{"model": "shout", "prompt": "ok", "stop": ["\\udfff"]}',
        _error(f"stop.0: {UNICODE}", "stop.0", "invalid_unicode"),
    ),
    (
        b'{"model": "shout", "prompt": "ok", "user": "\\ud83d"}',
        _error(f"user: {UNICODE}", "user", "invalid_unicode"),
    ),
    (b'{"model": "\\ud800", "prompt": "ok"}', _error(f"model: {UNICODE}", "model", "invalid_unicode")),
    (
        b'{"model": "shout", "prompt": [[false]]}',
        _error(f"prompt: must be {PROMPT_SHAPE}", "prompt", "invalid_type"),
    ),
    (
        b'{"model": "shout", "prompt": ""}',
        _error(f"prompt: must be {PROMPT_SHAPE}", "prompt", "invalid_type"),
    ),
    (
        b'{"model": "shout", "prompt": []}',
        _error(f"prompt: must be {PROMPT_SHAPE}", "prompt", "invalid_type"),
    ),
    (
        b'{"model": "shout", "prompt": "ok", "max_tokens": "12"}',
        _error("max_tokens: Input should be a valid integer", "max_tokens", "invalid_value"),
    ),
    (
        b'{"model": "shout", "prompt": "ok", "max_tokens": true}',
        _error("max_tokens: Input should be a valid integer", "max_tokens", "invalid_value"),
    ),
    (  # JSON Schema's integers include 3.0 (taken as 3), not 2.5
        b'{"model": "shout", "prompt": "ok", "max_tokens": 2.5}',
        _error("max_tokens: Input should be a valid integer", "max_tokens", "invalid_value"),
    ),
    (
        b'{"model": "shout", "prompt": "ok", "temperature": "0"}',
        _error("temperature: Input should be a valid number", "temperature", "invalid_value"),
    ),
    (  # not JSON, though Python's parsers take it: not "less than or equal to 2"
        b'{"model": "shout", "prompt": "ok", "temperature": NaN}',
        _error("temperature: Input should be a finite number", "temperature", "invalid_value"),
    ),
    (
        b'{"model": "shout", "prompt": "ok", "top_p": -Infinity}',
        _error("top_p: Input should be a finite number", "top_p", "invalid_value"),
    ),
    (  # FT reads top_k as uint32: a bigger one would wrap, 2**32 to 0 (no top-k at all)
        b'{"model": "shout", "prompt": "ok", "top_k": 4294967296}',
        _error("top_k: Input should be less than 4294967296", "top_k", "invalid_value"),
    ),
    (
        b'{"model": "shout", "prompt": "ok", "top_k": 12414066904738691386791180632064}',
        _error("top_k: Input should be less than 4294967296", "top_k", "invalid_value"),
    ),
    (
        b'{"model": "shout", "prompt": "ok", "ignore_eos": true, "min_length": 3}',
        _error("Unrecognized request argument supplied: min_length", "min_length", "unknown_parameter"),
    ),
    (
        b'{"model": "shout", "prompt": "ok", "stream_options": {"include_usage": true, "x": 1}}',
        _error(
            "Unrecognized request argument supplied: stream_options.x",
            "stream_options.x",
            "unknown_parameter",
        ),
    ),
    (b'{"prompt": "ok"}', _error("model: this field is required", "model", "missing_required_parameter")),
    (b"[" * 5000 + b"]" * 5000, _error("the body is not valid JSON", None, "invalid_json")),
    (
        b'{"model": "shout", "prompt": "ok", "n": 129}',
        _error("n: Input should be less than or equal to 128", "n", "invalid_value"),
    ),
    (
        b'{"model": "shout", "prompt": "ok", "n": 2, "best_of": 1}',
        _error("best_of (1) must be at least n (2)", "best_of", "invalid_value"),
    ),
    (
        b'{"model": "shout", "prompt": "ok", "max_tokens": 4, "min_tokens": 5}',
        _error("min_tokens (5) is more than max_tokens (4)", "min_tokens", "invalid_value"),
    ),
    # OpenAI's and vLLM's parameters FT cannot honour: refused naming the value, not ignored
    (
        b'{"model": "shout", "prompt": "ok", "presence_penalty": 0.5}',
        _error("presence_penalty=0.5 is not supported by this server", "presence_penalty", "invalid_value"),
    ),
    (
        b'{"model": "shout", "prompt": "ok", "logit_bias": {"5": 10}}',
        _error("logit_bias={'5': 10.0} is not supported by this server", "logit_bias", "invalid_value"),
    ),
    (  # taken only as null (the gateway never truncates), and refused as the others are
        b'{"model": "shout", "prompt": "ok", "truncate_prompt_tokens": 5}',
        _error(
            "truncate_prompt_tokens=5 is not supported by this server",
            "truncate_prompt_tokens",
            "invalid_value",
        ),
    ),
]


@pytest.mark.parametrize(
    ("body", "expected"),
    BAD_COMPLETIONS,
    ids=lambda v: v[:60].decode(errors="replace") if isinstance(v, bytes) else "",
)
def test_a_bad_completion_request_is_a_400_with_openais_body(gateway, body: bytes, expected: dict) -> None:
    answer = _post(gateway, body)
    assert (answer.status_code, answer.json()) == (400, expected)
    if body.startswith(b"{"):  # streamed, it is refused the same way, before any event
        streamed = _post(gateway, _streamed(body))
        assert (streamed.status_code, streamed.json()) == (400, expected)


BAD_CHATS = [
    (
        b'{"model": "shout", "messages": []}',
        _error(
            "messages: List should have at least 1 item after validation, not 0", "messages", "invalid_value"
        ),
    ),
    (
        b'{"model": "shout", "messages": [{"role": "user", "content": "\\ud800x"}]}',
        _error(f"messages.0.content: {UNICODE}", "messages.0.content", "invalid_unicode"),
    ),
    (
        b'{"model": "shout", "messages": [{"role": "user", "content": "hi", "weight": 1}]}',
        _error(
            "Unrecognized request argument supplied: messages.0.weight",
            "messages.0.weight",
            "unknown_parameter",
        ),
    ),
    # OpenAI's schema: only an assistant's turn may go without content; taken as empty, the
    # prompt was the chat template's frame alone
    (
        b'{"model": "shout", "messages": [{"role": "user", "content": null}]}',
        _error(
            "messages.0.content: this field is required", "messages.0.content", "missing_required_parameter"
        ),
    ),
    (
        b'{"model": "shout", "messages": [{"role": "user", "content": "hi"}, {"role": "system"}]}',
        _error(
            "messages.1.content: this field is required", "messages.1.content", "missing_required_parameter"
        ),
    ),
    (
        b'{"model": "shout", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
        _error("only text content parts can be served", "messages.0.content", "invalid_value"),
    ),
    (
        b'{"model": "shout", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "low"}',
        _error("reasoning_effort='low' is not supported by this server", "reasoning_effort", "invalid_value"),
    ),
]


@pytest.mark.parametrize(
    ("body", "expected"),
    BAD_CHATS,
    ids=["empty", "surrogate", "unknown-field", "null-content", "no-content", "image-part", "reasoning"],
)
def test_a_bad_chat_request_is_a_400_with_openais_body(gateway, body: bytes, expected: dict) -> None:
    for request in (body, _streamed(body)):
        answer = _post(gateway, request, "/v1/chat/completions")
        assert (answer.status_code, answer.json()) == (400, expected)


def test_token_ids_outside_the_vocabulary_are_a_400_before_any_stream(gateway, model) -> None:
    vocab = json.loads((model["hf"] / "config.json").read_text())["vocab_size"]
    for param, body, highest in (
        ("prompt", {"prompt": [[1, 2], [3, vocab + 5, vocab]]}, vocab + 5),
        ("prompt", {"prompt": [vocab]}, vocab),
        ("stop_token_ids", {"prompt": PROMPT, "stop_token_ids": [2, vocab + 7]}, vocab + 7),
    ):
        message = f"token id {highest} is not in the vocabulary (0 to {vocab - 1})"
        for stream in (False, True):
            answer = _post(gateway, {"model": "shout", "max_tokens": 2, **body, "stream": stream})
            assert (answer.status_code, answer.json()) == (400, _error(message, param, "invalid_value"))
    last = _post(gateway, {"model": "shout", "prompt": [vocab - 1], "max_tokens": 1, "stream": True})
    assert last.status_code == 200 and _events(last)[-1] == "[DONE]" and "error" not in last.text


def test_stream_options_without_a_stream_is_a_400_as_openai_answers(gateway) -> None:
    expected = _error("stream_options is only allowed when stream is true", "stream_options", "invalid_value")
    for path, body in (
        ("/v1/completions", {"prompt": PROMPT}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ):
        request = {"model": BASE, **body, "max_tokens": 1, "stream_options": {"include_usage": True}}
        for stream in ({}, {"stream": False}):
            answer = _post(gateway, {**request, **stream}, path)
            assert (answer.status_code, answer.json()) == (400, expected)
        streamed = _post(gateway, {**request, "stream": True}, path)
        assert streamed.status_code == 200 and _events(streamed)[-1] == "[DONE]"
        assert json.loads(_events(streamed)[-2])["usage"]["completion_tokens"] == 1


def test_nul_is_text_and_is_served(gateway, triton, model) -> None:
    prompt = "a\u0000b"
    answer = _post(gateway, {"model": BASE, "prompt": prompt, "max_tokens": 3, "temperature": 0})
    assert answer.status_code == 200
    ids = model["tokenizer"].encode(prompt, add_special_tokens=False)
    tokens, _ = model["reference"].greedy(ids, None, 3, end_id=model["end_id"])
    assert answer.json()["usage"] == {
        "prompt_tokens": len(ids),
        "completion_tokens": len(tokens),
        "total_tokens": len(ids) + len(tokens),
    }


def test_huge_and_deep_bodies_are_refused_before_reaching_the_model(gateway) -> None:
    long = _post(gateway, {"model": BASE, "prompt": "fox " * 250_000})  # 1 MB of text
    assert long.status_code == 400 and long.json()["error"]["code"] == "context_length_exceeded"
    assert "maximum context length is 1024 tokens" in long.json()["error"]["message"]
    too_large = _post(gateway, {"model": BASE, "prompt": "x" * (5 * 1024 * 1024)})
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "request_too_large"
    deep = _post(gateway, b'{"model": "shout", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert deep.status_code == 400 and set(deep.json()["error"]) == {"message", "type", "param", "code"}


def test_a_prompt_far_over_the_context_is_refused_on_its_head(gateway, model) -> None:
    """A 4 MB prompt is a 400 whatever the rest of it says: its first 16 characters per token of
    context already hold more than twice the context, as Hugging Face's tokenizer counts them."""
    head_chars = 16 * 1024
    prompt = "the quick brown fox " * 200_000
    head_tokens = len(model["tokenizer"].encode(prompt[:head_chars], add_special_tokens=False))
    assert head_tokens > 2 * 1024
    answer = _post(gateway, {"model": BASE, "prompt": prompt})
    assert answer.status_code == 400
    assert answer.json() == _error(
        f"this model's maximum context length is 1024 tokens; the prompt's first {head_chars} characters "
        f"alone are {head_tokens} tokens: send a shorter prompt",
        "prompt",
        "context_length_exceeded",
    )


def test_while_a_long_prompt_is_tokenized_the_gateway_answers_others(triton, model) -> None:
    """Tokenizing a prompt of 2 MB takes a second or more; it runs beside the event loop, not on it, so the
    requests that come meanwhile are answered meanwhile. Here the context is large enough that the
    whole prompt is tokenized (its 400 comes after that), while one client after another asks for
    the models: before, each of them waited for the tokenizer to finish."""
    server, url = _gateway(triton.grpc_url, model["hf"], max_model_len=10_000_000)
    try:
        prompt = "the quick brown fox " * 100_000
        body = {"model": BASE, "prompt": prompt, "max_tokens": 9_500_000}

        async def meanwhile() -> tuple[httpx.Response, int]:
            async with httpx.AsyncClient(timeout=120, headers=AUTH) as client:
                long = asyncio.ensure_future(client.post(url + "/v1/completions", json=body))
                answered = 0
                while not long.done():  # one small request after another until the long one ends
                    assert (await client.get(url + "/v1/models")).status_code == 200
                    answered += 1
                return await long, answered

        long, answered = asyncio.run(meanwhile())
        assert long.status_code == 400 and long.json()["error"]["code"] == "context_length_exceeded"
        tokens = len(model["tokenizer"].encode(prompt, add_special_tokens=False))
        assert f"({tokens} in the prompt, 9500000 for the completion)" in long.json()["error"]["message"]
        assert answered >= 10, answered  # before: 1, the request sent before the long one arrived whole
    finally:
        server.should_exit = True


# -- vLLM's extensions, honoured -----------------------------------------------------------------


def _text(model: dict, generated: list[int]) -> str:
    """What the tokens add to the prompt's text, with the Hugging Face tokenizer."""
    tokenizer, ids = model["tokenizer"], model["ids"]
    prompt = tokenizer.decode(ids, skip_special_tokens=True)
    return tokenizer.decode(ids + generated, skip_special_tokens=True)[len(prompt) :]


def test_min_tokens_and_ignore_eos_give_exactly_the_asked_length(gateway, model) -> None:
    request = {"model": BASE, "prompt": PROMPT, "max_tokens": 10, "temperature": 0}
    plain = _post(gateway, request).json()
    assert plain["usage"]["completion_tokens"] == model["stops_after"] < 10  # the model stops early
    assert plain["choices"][0]["finish_reason"] == "stop"
    for extra, minimum in (({"min_tokens": 6}, 6), ({"ignore_eos": True}, 10), ({"min_tokens": 10}, 10)):
        want, _ = model["reference"].greedy(
            model["ids"], None, 10, end_id=model["end_id"], min_new_tokens=minimum
        )
        answer = _post(gateway, {**request, **extra}).json()
        assert answer["usage"]["completion_tokens"] == len(want) >= minimum
        assert answer["choices"][0]["text"] == _text(model, want)
        streamed = _post(
            gateway, {**request, **extra, "stream": True, "stream_options": {"include_usage": True}}
        )
        chunks = [json.loads(e) for e in _events(streamed)[:-1]]
        assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == _text(model, want)
        assert chunks[-1]["usage"]["completion_tokens"] == len(want)
    ignored = _post(gateway, {**request, "ignore_eos": True}).json()
    assert ignored["choices"][0]["finish_reason"] == "length"


def test_generate_min_new_tokens_keeps_the_end_token_away(triton, model, capsys) -> None:
    """`ftprefix generate --min-new-tokens`, against the same model that stops early, answered and
    streamed."""
    from ftprefix.cli import main

    ids = ",".join(map(str, model["ids"]))
    argv = ["generate", "--url", triton.grpc_url, "--token-ids", "--max-new-tokens", "10", "--json", ids]
    assert main(argv) == 0
    assert len(json.loads(capsys.readouterr().out)["token_ids"]) == model["stops_after"] < 6
    want, _ = model["reference"].greedy(model["ids"], None, 10, end_id=model["end_id"], min_new_tokens=6)
    assert main([*argv, "--min-new-tokens", "6"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == want
    assert main([*argv, "--min-new-tokens", "6", "--stream"]) == 0
    chunks = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [t for chunk in chunks for t in chunk["token_ids"]] == want
    assert main([*argv, "--min-new-tokens", "-1"]) == 2
    assert capsys.readouterr().err == "ftprefix generate: error: --min-new-tokens must be 0 or more, got -1\n"


def _chunks(gateway: str, body: dict, path: str = "/v1/completions") -> list[dict]:
    return [json.loads(e) for e in _events(_post(gateway, body, path))[:-1]]


def test_continuous_usage_stats_put_the_tokens_so_far_on_every_chunk(gateway, model) -> None:
    want, _ = model["reference"].greedy(model["ids"], None, 6, end_id=model["end_id"], min_new_tokens=6)
    request = {"model": BASE, "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    every = {"include_usage": True, "continuous_usage_stats": True}
    *pieces, last = _chunks(gateway, {**request, "stream": True, "stream_options": every})
    assert last == {**last, "choices": [], "usage": usage(len(model["ids"]), 6)}
    text = ""
    for chunk in pieces:
        so_far = chunk["usage"]["completion_tokens"]
        assert chunk["usage"] == usage(len(model["ids"]), so_far)
        text += chunk["choices"][0]["text"]
        # the text so far is that of so many tokens, less at most one character still partial
        whole = _text(model, want[:so_far])
        assert whole.startswith(text) and len(whole) - len(text) <= 1
    assert text == _text(model, want) and so_far == 6
    # chat: the opening chunk (the role) has none generated yet, the last all six
    chat = {
        **request,
        "stream": True,
        "stream_options": every,
        "messages": [{"role": "user", "content": "hi"}],
    }
    del chat["prompt"]
    *pieces, last = _chunks(gateway, chat, "/v1/chat/completions")
    counts = [c["usage"]["completion_tokens"] for c in pieces]
    assert (
        counts[0] == 0 and counts[-1] == last["usage"]["completion_tokens"] == 6 and counts == sorted(counts)
    )
    # continuous_usage_stats needs include_usage (as vLLM reads it); include_usage alone, the last chunk only
    for options in ({"continuous_usage_stats": True}, {"include_usage": True}):
        chunks = _chunks(gateway, {**request, "stream": True, "stream_options": options})
        assert not any("usage" in c for c in chunks if c["choices"])


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def test_stop_token_ids_end_the_answer_at_that_token(gateway, model) -> None:
    free, _ = model["reference"].greedy(model["ids"], None, 8, end_id=model["end_id"], min_new_tokens=8)
    stop = free[2]
    want, reason = model["reference"].greedy(
        model["ids"], None, 8, end_id=model["end_id"], stop_words=[[stop]], min_new_tokens=8
    )
    assert reason == "stop_words" and want[-1] == stop
    answer = _post(
        gateway,
        {
            "model": BASE,
            "prompt": PROMPT,
            "max_tokens": 8,
            "temperature": 0,
            "stop_token_ids": [stop],
            "ignore_eos": True,
        },
    ).json()
    assert (
        answer["usage"]["completion_tokens"] == len(want) and answer["choices"][0]["finish_reason"] == "stop"
    )


def test_top_k_and_repetition_penalty_reach_the_model_as_sent(gateway, triton, model) -> None:
    """The gateway's sampled answer equals the fastertransformer model's, called with raw
    tritonclient and the FT inputs these fields name: same seed, same tokens."""
    request = {
        "model": "shout",
        "prompt": PROMPT,
        "max_tokens": 6,
        "temperature": 0.7,
        "seed": 11,
        "top_k": 3,
        "repetition_penalty": 1.3,
        "ignore_eos": True,
    }
    answer = _post(gateway, request).json()
    ids = model["ids"]
    arrays = {
        protocol.INPUT_IDS: np.array([ids], dtype=np.uint32),
        protocol.INPUT_LENGTHS: np.array([[len(ids)]], dtype=np.uint32),
        protocol.REQUEST_OUTPUT_LEN: np.array([[6]], dtype=np.uint32),
        protocol.TEMPERATURE: np.array([[0.7]], dtype=np.float32),
        protocol.RUNTIME_TOP_K: np.array([[3]], dtype=np.uint32),
        protocol.RUNTIME_TOP_P: np.array([[1.0]], dtype=np.float32),
        protocol.REPETITION_PENALTY: np.array([[1.3]], dtype=np.float32),
        protocol.RANDOM_SEED: np.array([[11]], dtype=np.uint64),
        protocol.MIN_LENGTH: np.array([[6]], dtype=np.int32),
        protocol.TASK_IDS: np.array([[list(TASKS).index("shout")]], dtype=np.uint32),
    }
    with grpcclient.InferenceServerClient(triton.grpc_url) as raw:
        stream_answers: list = []
        raw.start_stream(callback=lambda result, error: stream_answers.append((result, error)))
        raw.async_stream_infer(protocol.FT_MODEL, tensors(arrays))
        raw.stop_stream()
    result, error = (
        stream_answers[-2]
        if stream_answers[-1][0].as_numpy(protocol.OUTPUT_IDS) is None
        else stream_answers[-1]
    )
    assert error is None
    generated = result.as_numpy(protocol.OUTPUT_IDS)[0, 0, len(ids) : len(ids) + 6].tolist()
    assert answer["choices"][0]["text"] == _text(model, generated)


def _choice_texts(gateway: str, body: dict) -> tuple[list[str], dict | None]:
    """Each choice's whole text, by its index, and the usage, of a list of prompts answered whole
    or streamed (the usage: where the stream asked for it)."""
    if not body.get("stream"):
        answer = _post(gateway, body).json()
        assert [c["index"] for c in answer["choices"]] == list(range(len(answer["choices"])))
        return [c["text"] for c in answer["choices"]], answer["usage"]
    texts, use = [""] * (len(body["prompt"]) * body.get("n", 1)), None
    for chunk in _chunks(gateway, body):
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["text"]
        use = chunk.get("usage") or use
    return texts, use


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_equal_prompts_of_one_request_sample_each_on_its_own_unless_seeded(gateway, stream) -> None:
    """OpenAI samples every prompt of a list on its own. FT gives rows that share a random_seed
    the same random numbers, so without a seed of the caller's each prompt gets its own; with one,
    every row samples as a lone request with that seed does (vLLM's reading of a seed)."""
    request = {"model": "shout", "max_tokens": 8, "temperature": 2, "ignore_eos": True, "stream": stream}
    unseeded, _ = _choice_texts(gateway, {**request, "prompt": [PROMPT] * 4})
    assert len(set(unseeded)) == 4, unseeded  # a random model at temperature 2: any two equal is chance
    seeded, _ = _choice_texts(gateway, {**request, "prompt": [PROMPT] * 3, "seed": 5})
    assert seeded == _choice_texts(gateway, {**request, "prompt": [PROMPT], "seed": 5})[0] * 3


ONE_ROW = {"model": BASE, "prompt": PROMPT, "max_tokens": 1}  # a request Triton counts as one row


def _rows_settled(triton: EmbeddedServer, gateway: str) -> int:
    """Rows Triton counted, read once every request sent before is counted: Triton counts a request
    after its answer is on its way, so a count read just after an earlier test's last answer can miss
    its rows, which would then count as this test's. Read once a request of one row sent after them
    moved the count by exactly its own row."""
    deadline = time.monotonic() + 10
    while True:
        start = rows_counted(triton.grpc_url)
        _post(gateway, ONE_ROW)
        while (now := rows_counted(triton.grpc_url)) < start + 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # bounded poll of Triton's own statistics
        if now == start + 1 or time.monotonic() > deadline:
            return now


def _rows_computed(
    triton: EmbeddedServer, gateway: str, body: dict, expected: int
) -> tuple[list[str], dict | None, int]:
    """`_choice_texts` of the body, and the rows Triton computed for it, read once at least
    `expected` of them and a request of one row sent after it are counted (Triton counts a request
    once its answer is on its way): more rows than expected show, fewer wait out the poll."""
    before = _rows_settled(triton, gateway)
    texts, use = _choice_texts(gateway, body)
    _post(gateway, ONE_ROW)
    deadline = time.monotonic() + 10
    while rows_counted(triton.grpc_url) - before < expected + 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # bounded poll of Triton's own statistics
    return texts, use, rows_counted(triton.grpc_url) - before - 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_n_gives_each_prompt_n_choices_in_openais_order(gateway, triton, model, stream) -> None:
    """Choice j of prompt i is choices[i * n + j], as OpenAI numbers them; greedy choices are
    Hugging Face's greedy answer, computed once per prompt (a row at Triton, not n of the same);
    sampled ones each sample on their own, a row each, the first of each prompt as the prompt
    alone with the caller's seed; the prompt's tokens are counted once in usage, every choice's
    completion as its own."""
    other = "Hello there"
    request = {"model": BASE, "prompt": [PROMPT, other], "n": 3, "max_tokens": 5, "ignore_eos": True}
    request.update(stream=stream, **({"stream_options": {"include_usage": True}} if stream else {}))

    tokenizer, want = model["tokenizer"], []
    for text in (PROMPT, other):  # Hugging Face's greedy answer, with the end token held off (ignore_eos)
        ids = tokenizer.encode(text, add_special_tokens=False)
        generated, _ = model["reference"].greedy(ids, None, 5, end_id=model["end_id"], min_new_tokens=5)
        want.append(tokenizer.decode(ids + generated)[len(tokenizer.decode(ids)) :])
    prompt_tokens = sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in (PROMPT, other))
    greedy, use, rows = _rows_computed(triton, gateway, {**request, "temperature": 0}, 2)
    assert greedy == [want[0]] * 3 + [want[1]] * 3
    assert use == usage(prompt_tokens, 6 * 5)
    assert rows == 2
    sampled, use, rows = _rows_computed(triton, gateway, {**request, "temperature": 2, "seed": 9}, 6)
    assert len(set(sampled)) == 6, sampled  # a random model at temperature 2: any two equal is chance
    assert rows == 6 and use == usage(prompt_tokens, 6 * 5)
    alone, _ = _choice_texts(gateway, {**request, "n": 1, "temperature": 2, "seed": 9})
    assert [sampled[0], sampled[3]] == alone


def test_openai_s_chat_fields_that_ask_for_nothing_more_change_nothing(gateway) -> None:
    """SDKs and frameworks send OpenAI's own chat fields (store, metadata, service_tier, ...) with
    their defaults, and OpenAI takes them: they were 400s as unknown fields. Values asking for what
    this server lacks stay 400s naming the field."""
    client = openai.OpenAI(base_url=gateway + "/v1", api_key=KEY, max_retries=0)
    plain = {
        "model": BASE,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    want = client.chat.completions.create(**plain).choices[0].message.content
    neutral = {
        "store": False,
        "metadata": {"team": "search"},
        "service_tier": "default",
        "modalities": ["text"],
        "prompt_cache_key": "session-7",
        "prompt_cache_retention": "in_memory",
        "safety_identifier": "user-7",
        "functions": [],
        "function_call": "none",
        "audio": None,
        "prediction": None,
        "reasoning_effort": None,
        "verbosity": None,
        "web_search_options": None,
    }
    assert client.chat.completions.create(**plain, **neutral).choices[0].message.content == want
    stream = client.chat.completions.create(
        **plain, **neutral, stream=True, stream_options={"include_usage": True, "include_obfuscation": False}
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want
    for asked in (
        {"store": True},
        {"service_tier": "flex"},
        {"modalities": ["text", "audio"]},
        {"functions": [{"name": "lookup", "parameters": {"type": "object"}}]},
        {"reasoning_effort": "low"},
        {"web_search_options": {}},
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(**plain, **asked)
        assert refused.value.body["param"] == next(iter(asked)), refused.value.body


def test_chat_n_gives_n_choices(gateway) -> None:
    body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "n": 2, "max_tokens": 4}
    answer = _post(gateway, {**body, "temperature": 2}, "/v1/chat/completions").json()
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    contents = [c["message"]["content"] for c in answer["choices"]]
    assert contents[0] != contents[1], contents


def test_only_an_assistant_turn_goes_without_content_as_the_published_schema_says(gateway) -> None:
    """An independent validator of /openapi.json and the gateway agree on each body."""
    doc = httpx.get(gateway + "/openapi.json").json()
    validator = jsonschema.Draft202012Validator(
        {
            "$ref": "#/paths/~1v1~1chat~1completions/post/requestBody/content/application~1json/schema",
            "paths": doc["paths"],
            "components": doc["components"],
        }
    )
    hi = {"role": "user", "content": "hi"}
    for messages, taken in (
        ([{"role": "user", "content": None}], False),
        ([{"role": "user"}], False),
        ([hi, {"role": "tool", "tool_call_id": "7"}], False),
        ([{"role": "developer", "content": None}, hi], False),
        ([hi, {"role": "assistant", "content": None}, hi], True),
        ([hi, {"role": "assistant"}, hi], True),
        ([hi], True),
    ):
        body = {"model": BASE, "messages": messages, "max_tokens": 1}
        assert validator.is_valid(body) == taken, messages
        answer = _post(gateway, body, "/v1/chat/completions")
        assert answer.status_code == (200 if taken else 400), (messages, answer.text)


def test_an_integer_written_as_a_float_is_that_integer(gateway, model) -> None:
    """/openapi.json says these fields are JSON Schema integers, which are any number without a
    fraction (3.0 is 3): an independent validator takes such a body, so the gateway must answer
    it as it answers the integers."""
    doc = httpx.get(gateway + "/openapi.json").json()
    validator = jsonschema.Draft202012Validator(
        {
            "$ref": "#/paths/~1v1~1completions/post/requestBody/content/application~1json/schema",
            "paths": doc["paths"],
            "components": doc["components"],
        }
    )
    ids = model["ids"]
    as_ints = {"model": "shout", "prompt": ids, "max_tokens": 3, "min_tokens": 3, "temperature": 0, "n": 1}
    as_floats = {**as_ints, "prompt": [float(i) for i in ids], "max_tokens": 3.0, "min_tokens": 3.0, "n": 1.0}
    validator.validate(as_floats)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**as_ints, "max_tokens": 2.5})
    answers = [
        _post(gateway, body) for body in (as_ints, as_floats, {**as_floats, "prompt": [as_floats["prompt"]]})
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    texts = {a.json()["choices"][0]["text"] for a in answers}
    usages = {json.dumps(a.json()["usage"]) for a in answers}
    assert len(texts) == 1 and len(usages) == 1
    assert answers[0].json()["usage"]["completion_tokens"] == 3


# -- failures after the 200, errors for tenants, request ids --------------------------------------


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_stream_cut_by_triton_dying_ends_with_an_error_event_then_done(
    model, tmp_path: Path, transport: str
) -> None:
    shutil.copytree(model["ft"], tmp_path / "ft")
    # one engine instance: the one request is all it is asked
    server = EmbeddedServer(tmp_path / "ft", streaming=True, watch_interval=None, stop_timeout=0, instances=1)
    server.start()
    http_url = server.http_url if transport == "http" else None
    gateway, url = _gateway(server.grpc_url, model["hf"], triton_http_url=http_url)
    try:
        request = {
            "model": BASE,
            "prompt": PROMPT,
            "max_tokens": 400,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
        lines = []
        with httpx.stream(
            "POST", url + "/v1/completions", json=request, headers=AUTH, timeout=120
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                lines.append(line)
                if len(lines) == 2:  # the first event is out: Triton goes away mid-stream
                    os.killpg(server.pid, signal.SIGKILL)  # Triton dies mid-stream
        events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["type"] == "service_unavailable" and error["code"] == "model_server_unavailable"
        assert server.grpc_url.split(":")[-1] not in json.dumps(error)
        assert server.http_url.split(":")[-1] not in json.dumps(error)
        assert len(events) < 400  # it was cut, not finished
    finally:
        gateway.should_exit = True
        server.stop()


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_request_the_model_server_refuses_is_a_400_streamed_or_not(
    triton, model, caplog, transport: str
) -> None:
    # a context the engine cannot hold (4096 tokens with the prefix) passes the gateway's own check
    http_url = triton.http_url if transport == "http" else None
    gateway, url = _gateway(triton.grpc_url, model["hf"], triton_http_url=http_url, max_model_len=6000)
    refused = {
        "error": {
            "message": "the model server refused this request",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_request",
        }
    }
    try:
        request = {"model": "shout", "prompt": PROMPT, "max_tokens": 4500}
        with gateway_log(caplog):
            answer = _post(url, request, **{"x-request-id": "too-long-1"})
            streamed = _post(url, {**request, "stream": True}, **{"x-request-id": "too-long-2"})
        assert answer.status_code == 400 and answer.json() == refused
        assert streamed.status_code == 200  # sent before Triton's answer came
        assert [json.loads(e) for e in _events(streamed)[:-1]] == [refused]
        assert _events(streamed)[-1] == "[DONE]"
        for request_id in ("too-long-1", "too-long-2"):  # the operator's detail, under the request id
            (line,) = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
            assert "the model server refused it" in line and "exceeds the limit of 4096" in line
            assert protocol.REFUSED_ON_STREAM not in line
    finally:
        gateway.should_exit = True


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_request_in_flight_when_triton_dies_is_a_503_with_retry_after(
    model, tmp_path: Path, caplog, transport: str
) -> None:
    shutil.copytree(model["ft"], tmp_path / "ft")
    server = EmbeddedServer(
        tmp_path / "ft", streaming=False, watch_interval=None, stop_timeout=0, instances=1
    )
    server.start()
    http_url = server.http_url if transport == "http" else None
    gateway, url = _gateway(server.grpc_url, model["hf"], triton_http_url=http_url)
    try:
        request = {"model": BASE, "prompt": PROMPT, "max_tokens": 600, "temperature": 0, "ignore_eos": True}
        answers: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: answers.append(_post(url, request, **{"x-request-id": "req-42"}))
        )
        with caplog.at_level(logging.WARNING, logger="ftprefix.gateway"):
            sender.start()
            deadline = time.monotonic() + 60
            while "ftprefix_in_flight_requests 1.0" not in httpx.get(url + "/metrics").text:
                assert (
                    time.monotonic() < deadline and sender.is_alive()
                )  # bounded poll: the request is at Triton
            os.killpg(server.pid, signal.SIGKILL)  # Triton dies under the request
            sender.join(timeout=120)
        (answer,) = answers
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert answer.headers["x-request-id"] == "req-42"
        body = answer.json()["error"]
        assert body["type"] == "service_unavailable"
        assert server.grpc_url.split(":")[-1] not in json.dumps(body)
        assert server.http_url.split(":")[-1] not in json.dumps(body)
        logged = [r.getMessage() for r in caplog.records if "req-42" in r.getMessage()]
        assert (
            logged and (http_url or server.grpc_url) in logged[0]
        )  # the operator's detail, under the request id
    finally:
        gateway.should_exit = True
        server.stop()


def test_requests_that_outlive_the_stop_timeout_end_with_a_503_not_a_bare_close(model, tmp_path) -> None:
    """SIGTERM (a pod stopping) gives requests in flight the stop timeout; what is still running
    then gets what a Triton going away gives: a 503 to retry, or a stream's error event and [DONE]."""
    shutil.copytree(model["ft"], tmp_path / "ft")
    # Triton holds a lone request for its whole batching window: both are still there at the stop
    with EmbeddedServer(
        tmp_path / "ft", streaming=True, watch_interval=None, stop_timeout=0, max_queue_delay_us=60_000_000
    ) as triton:
        settings = GatewaySettings(triton.grpc_url, model["hf"], BASE, api_keys=(KEY,), stop_timeout=0.5)
        gateway = make_server(settings, "127.0.0.1", free_port())
        serving = start_in_thread(gateway)
        url = f"http://127.0.0.1:{gateway.config.port}"
        request = {"model": BASE, "prompt": PROMPT, "max_tokens": 4}
        answers: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: answers.append(_post(url, request, **{"x-request-id": "r-1"}))
        )
        sender.start()
        with httpx.stream(
            "POST", url + "/v1/completions", json={**request, "stream": True}, headers=AUTH, timeout=60
        ) as streamed:
            assert streamed.status_code == 200
            deadline = time.monotonic() + 60
            while "ftprefix_in_flight_requests 2.0" not in httpx.get(url + "/metrics").text:
                assert time.monotonic() < deadline  # bounded poll: both requests are at Triton
            gateway.should_exit = True  # as uvicorn's SIGTERM handler sets it
            events = [
                line.removeprefix("data: ") for line in streamed.iter_lines() if line.startswith("data: ")
            ]
        serving.join(timeout=60)
        sender.join(timeout=60)
    assert not serving.is_alive()
    error = {
        "message": "the server is shutting down; try again",
        "type": "service_unavailable",
        "param": None,
        "code": "server_shutting_down",
    }
    assert [json.loads(e) for e in events[:-1]] == [{"error": error}] and events[-1] == "[DONE]"
    (answer,) = answers
    assert (answer.status_code, answer.json()) == (503, {"error": error})
    assert answer.headers["retry-after"] == "1" and answer.headers["x-request-id"] == "r-1"


def test_every_response_carries_a_request_id(gateway) -> None:
    fine = _post(gateway, {"model": BASE, "prompt": PROMPT, "max_tokens": 1}, **{"x-request-id": "abc-1"})
    assert fine.status_code == 200 and fine.headers["x-request-id"] == "abc-1"
    for response in (
        _post(gateway, {"model": BASE}, **{"x-request-id": "bad id with spaces"}),
        httpx.get(gateway + "/v1/models"),
        httpx.get(gateway + "/health"),
    ):
        rid = response.headers["x-request-id"]
        assert len(rid) == 32 and int(rid, 16) >= 0  # a new one where the caller's was unusable or absent


def test_a_failure_inside_the_gateway_is_a_500_with_its_request_id_and_the_traceback_in_the_log(
    triton, model, caplog
) -> None:
    """A native library raising where nothing expects it (as SentencePiece once did on a lone
    surrogate) stands for any bug: the caller gets OpenAI's body with a request id and nothing
    else, the log gets the traceback under that id, and the gateway goes on serving."""
    from ftprefix.text import load_tokenizer

    tokenizer = load_tokenizer(model["hf"])
    encode = tokenizer._encode

    def failing(text: str) -> list[int]:
        if "BOOM" in text:
            raise RuntimeError("Unable to cast Python instance")
        return encode(text)

    tokenizer._encode = failing  # type: ignore[method-assign]
    server, url = _gateway(triton.grpc_url, model["hf"], tokenizer=tokenizer)
    try:
        with caplog.at_level(logging.ERROR, logger="ftprefix.gateway"):
            for stream in (False, True):
                body = {"model": BASE, "prompt": "BOOM", "max_tokens": 2, "stream": stream}
                answer = _post(url, body, **{"x-request-id": f"bug-{stream}"})
                assert answer.status_code == 500, answer.text
                assert answer.json() == {
                    "error": {
                        "message": f"internal error (request id bug-{stream})",
                        "type": "server_error",
                        "param": None,
                        "code": "internal_error",
                    }
                }
                assert answer.headers["x-request-id"] == f"bug-{stream}"
        logged = [r for r in caplog.records if "bug-" in r.getMessage()]
        assert len(logged) == 2 and all("Unable to cast" in str(r.exc_info[1]) for r in logged)
        fine = _post(url, {"model": BASE, "prompt": PROMPT, "max_tokens": 2})
        assert fine.status_code == 200 and fine.json()["usage"]["completion_tokens"] >= 1
    finally:
        server.should_exit = True


def test_a_client_that_leaves_before_its_whole_body_came_is_no_failure(gateway, caplog) -> None:
    """A client that closes its connection halfway through its body (a timeout, a killed process)
    has nothing to be answered: counted as gone (499), as a client that leaves while its request
    waits, not as the gateway's internal error with a traceback in the log."""

    def counted(status: str) -> float:
        return metric_delta(
            before, metric_samples(gateway), "ftprefix_tenant_requests_total", tenant="api-key", status=status
        )

    host, port = gateway.removeprefix("http://").split(":")
    before = metric_samples(gateway)
    with gateway_log(caplog):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {KEY}\r\nContent-Length: 1000\r\n\r\n".encode()
                + b'{"model": "toy-base", "prom'
            )
        deadline = time.monotonic() + 30
        while counted("499") + counted("500") == 0:  # the gateway has seen the disconnect
            assert time.monotonic() < deadline, "the request was never counted"
            time.sleep(0.05)  # bounded poll of the gateway's own count; the assertions below check
    assert (counted("499"), counted("500")) == (1, 0)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


STRICT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System messages are not supported') }}{% endif %}"
    "{{ m['role'] }}: {{ m['content'].strip(m['name']) }}\n{% endfor %}assistant:"
)


@pytest.mark.parametrize(
    "messages, message",
    [
        (
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "System messages are not supported",
        ),
        (  # the template reads a member the message does not have, and calls strip() with it
            [{"role": "user", "content": "hi"}],
            "the chat template failed on these messages: ",
        ),
    ],
)
def test_messages_a_chat_template_refuses_or_fails_on_are_a_400(
    triton, model, tmp_path: Path, messages: list, message: str
) -> None:
    template = tmp_path / "strict.jinja"
    template.write_text(STRICT_TEMPLATE)
    server, url = _gateway(triton.grpc_url, model["hf"], chat_template=template)
    try:
        answer = _post(url, {"model": BASE, "messages": messages}, path="/v1/chat/completions")
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["message"].startswith(message) and error["code"] == "invalid_messages"
        assert error["param"] == "messages" and error["type"] == "invalid_request_error"
        named = [{"role": "user", "content": "hi!!", "name": "!"}]  # the same template renders these
        fine = _post(url, {"model": BASE, "messages": named, "max_tokens": 1}, path="/v1/chat/completions")
        assert fine.status_code == 200, fine.text
    finally:
        server.should_exit = True


# -- /openapi.json, and a fuzzer held to it ------------------------------------------------------


def test_the_openapi_document_says_what_the_gateway_does(gateway) -> None:
    doc = httpx.get(gateway + "/openapi.json").json()
    assert "422" not in json.dumps(doc) and "HTTPValidationError" not in json.dumps(doc)
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    for path in ("/v1/completions", "/v1/chat/completions"):
        operation = doc["paths"][path]["post"]
        assert operation["security"] == [{"bearer": []}]
        assert set(operation["responses"]) == {"200", "400", "401", "404", "413", "429", "500", "503", "504"}
        assert set(operation["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
        event = operation["responses"]["200"]["content"]["text/event-stream"]["schema"]
        assert event["required"] == ["data"]  # each server-sent event
        error = operation["responses"]["400"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/ErrorResponse"}
        assert "retry-after" in operation["responses"]["429"]["headers"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body["additionalProperties"] is False and body["properties"]["model"]["minLength"] == 1
    chat = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert chat["properties"]["messages"]["minItems"] == 1
    prompt = doc["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "properties"
    ]["prompt"]
    assert {"minLength": 1, "type": "string"}.items() <= prompt["anyOf"][0].items()
    assert all(v.get("minItems") == 1 for v in prompt["anyOf"][1:])
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    assert "security" not in doc["paths"]["/health"]["get"]


def _answered(gateway: str) -> dict[str, float]:
    """The completions and chats the gateway has answered with a 200, per model."""
    text = httpx.get(gateway + "/metrics").text
    counts = re.findall(
        r'^ftprefix_requests_total\{model="([^"]*)",status="200"\} (\S+)$', text, re.MULTILINE
    )
    return {model: float(count) for model, count in counts}


def test_schemathesis_finds_nothing(gateway, tmp_path: Path) -> None:
    """A bounded run in the suite (benchmarks/fuzz_openai.py runs a longer one). Every response
    must be documented, match its schema, never be a 5xx; invalid requests must be refused and
    requests without the key answered 401. Not checked: that every valid request succeeds, since a
    model name the schema allows (any non-empty string) need not exist (404, documented); most
    requests go to models that do (benchmarks/fuzz_models.py), so generation is fuzzed too."""
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "fuzz_models",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "benchmarks"),
        "FTPREFIX_FUZZ_MODELS": ",".join([BASE, *TASKS]),
    }
    answered = _answered(gateway)
    assert st is not None, "schemathesis is one of the dev extra's packages"
    run = subprocess.run(
        [
            st,
            "run",
            gateway + "/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
            "response_headers_conformance,negative_data_rejection,ignored_auth,unsupported_method",
            "--header",
            f"Authorization: Bearer {KEY}",
            "--max-examples",
            "25",
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "7",
            "--workers",
            "1",
            "--request-timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    after = _answered(gateway)
    # the schema's examples name the base model; the hooks sent requests to the tasks too
    assert all(after.get(task, 0) > answered.get(task, 0) for task in TASKS), (answered, after)


def test_the_openai_client_reads_the_error_bodies(gateway) -> None:
    api = openai.OpenAI(base_url=gateway + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        api.completions.create(model="shout", prompt="ok", max_tokens=2, extra_body={"best_of_n": 3})
    assert bad.value.body["code"] == "unknown_parameter" and bad.value.body["param"] == "best_of_n"
    done = api.completions.create(
        model="shout", prompt="ok", max_tokens=3, extra_body={"ignore_eos": True, "top_k": 2}
    )
    assert done.usage.completion_tokens == 3


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InferenceError("cancelled", status="StatusCode.CANCELLED"), 503),  # Triton shutting down
        (InferenceError("aborted", status="StatusCode.ABORTED"), 503),
        (ServerUnavailableError("10.0.0.7:8001", "connection refused"), 503),
        (ModelNotReadyError("10.0.0.7:8001", "fastertransformer"), 503),
        (RequestTimeoutError("10.0.0.7:8001", 30.0), 504),
        (InvalidRequestError("refused: id 9", status="StatusCode.INVALID_ARGUMENT"), 400),
        (InferenceError("CUDA error", status="StatusCode.INTERNAL"), 500),
    ],
)
def test_model_server_failures_map_to_statuses_that_name_nothing_internal(error, status, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="ftprefix.gateway"):
        answer = from_client_error(error, "rid-1")
    assert answer.status == status
    body = json.dumps(answer.body())
    assert "10.0.0.7" not in body and "ftprefix serve" not in body and "timeout=" not in body
    assert dict(answer.headers).get("retry-after") == ("1" if status == 503 else None)
    assert any("rid-1" in r.getMessage() and str(error) in r.getMessage() for r in caplog.records)
