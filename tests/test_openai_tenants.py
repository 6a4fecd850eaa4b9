"""The OpenAI API as teams deploy it, called with the official `openai` package against a real
`ftprefix serve`: keys per tenant, chat with the tokenizer's template, per-task metrics, log
probabilities, and OpenAI's error body for everything."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from gateway_support import gateway_log, metric_delta, metric_samples
from serving_support import another_models_tokenizer, convert_toy, tensors
from transformers import AutoTokenizer

from ftprefix import assets, cli, protocol
from ftprefix.gateway.app import GatewaySettings
from ftprefix.gateway.run import make_server, start_in_thread
from ftprefix.serving.server import EmbeddedServer, free_port
from ftprefix.text import copy_tokenizer_files

TASKS = {"smile": 3, "shout": 5, "story": 2}
BASE = "toy-base"
ADMIN = "admin-key"
PROMPT = "The quick brown fox"
MAX_TOKENS = 6
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)
MESSAGES = [{"role": "system", "content": "Be short."}, {"role": "user", "content": "the cat sat on"}]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tenants")
    (root / "template.jinja").write_text(TEMPLATE, encoding="utf-8")
    return {**convert_toy(root, TASKS, seed=11), "root": root}


def _write_keys(path: Path, keys: dict) -> None:
    staged = path.with_suffix(".tmp")
    staged.write_text(json.dumps(keys), encoding="utf-8")
    os.replace(staged, path)  # as an operator's tooling swaps it: atomically


@pytest.fixture(scope="module")
def triton(model):
    with EmbeddedServer(model["ft"], watch_interval=None, stop_timeout=0) as server:
        yield server


def _gateway(triton_url: str, hf: Path, **settings):
    server = make_server(GatewaySettings(triton_url, hf, BASE, **settings), "127.0.0.1", free_port())
    start_in_thread(server)
    return server, f"http://127.0.0.1:{server.config.port}/v1"


@pytest.fixture(scope="module")
def gateway(triton, model):
    keys_file = model["root"] / "keys.json"
    _write_keys(keys_file, {"tenant-a": ["smile"], "tenant-b": ["shout", BASE], "everything": "*"})
    server, url = _gateway(
        triton.grpc_url,
        model["hf"],
        triton_http_url=triton.http_url,
        api_keys=(ADMIN,),
        api_keys_file=keys_file,
        chat_template=model["root"] / "template.jinja",
    )
    try:
        yield {"url": url, "keys_file": keys_file, "root": url.removesuffix("/v1")}
    finally:
        server.should_exit = True


def _api(gateway: dict, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway["url"], api_key=key, max_retries=0)


# -- keys ----------------------------------------------------------------------------------------


def test_no_key_or_a_wrong_key_is_401_and_probes_stay_open(gateway) -> None:
    for key in ("wrong-key", ADMIN + "x", ADMIN[:-1]):
        with pytest.raises(openai.AuthenticationError) as refused:
            _api(gateway, key).models.list()
        assert refused.value.status_code == 401 and refused.value.body["code"] == "invalid_api_key"
    raw = httpx.post(gateway["url"] + "/completions", json={"model": "smile", "prompt": "x"})
    assert raw.status_code == 401 and raw.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(gateway["root"] + "/health").json() == {"status": "ok"}
    assert httpx.get(gateway["root"] + "/metrics").status_code == 200


def test_a_key_for_every_model_sees_every_model(gateway) -> None:
    for key in (ADMIN, "everything"):
        assert [m.id for m in _api(gateway, key).models.list()] == [BASE, *TASKS]


def test_a_scoped_key_sees_and_uses_only_its_tasks(gateway) -> None:
    a, b = _api(gateway, "tenant-a"), _api(gateway, "tenant-b")
    assert [m.id for m in a.models.list()] == ["smile"]
    assert [m.id for m in b.models.list()] == [BASE, "shout"]
    assert a.completions.create(model="smile", prompt=PROMPT, max_tokens=2, temperature=0).choices[0].text
    assert b.completions.create(model=BASE, prompt=PROMPT, max_tokens=2, temperature=0).choices[0].text
    bodies = {}
    for model in ("shout", BASE, "story", "no-such-task"):
        with pytest.raises(openai.NotFoundError) as hidden:
            a.completions.create(model=model, prompt=PROMPT, max_tokens=2)
        with pytest.raises(openai.NotFoundError):
            a.models.retrieve(model)
        body = json.dumps(hidden.value.body)
        # nothing of the tasks this key may not use, beyond the name the caller sent itself
        assert not [t for t in [BASE, *TASKS] if t not in (model, "smile") and t in body], body
        bodies[model] = body.replace(repr(model), "MODEL")
    assert len(set(bodies.values())) == 1  # a hidden task answers exactly as a missing one
    with pytest.raises(openai.NotFoundError):
        b.chat.completions.create(model="smile", messages=MESSAGES, max_tokens=2)


def test_the_keys_file_is_read_again_while_serving(gateway, caplog) -> None:
    path = gateway["keys_file"]
    keys = json.loads(path.read_text())
    caplog.set_level(logging.WARNING, logger="ftprefix.gateway")
    try:
        _write_keys(path, {**keys, "tenant-c": ["story"], "tenant-a": ["smile", "shout"]})
        assert [m.id for m in _api(gateway, "tenant-c").models.list()] == ["story"]
        assert [m.id for m in _api(gateway, "tenant-a").models.list()] == ["smile", "shout"]
        path.write_text("{ not json", encoding="utf-8")  # a broken edit keeps the keys, and says so
        assert [m.id for m in _api(gateway, "tenant-c").models.list()] == ["story"]
        assert [r.getMessage() for r in caplog.records] == [
            f"keeping the previous API keys: {path} is not JSON (Expecting property name enclosed in "
            'double quotes: line 1 column 3 (char 2)): the API keys file is a JSON object {"KEY": '
            '["task", ...] or "*"}'
        ]
        caplog.clear()
        path.unlink()  # a file that is gone: its keys are refused until it is back, and that is said
        with pytest.raises(openai.AuthenticationError):
            _api(gateway, "tenant-c").models.list()
        with pytest.raises(openai.AuthenticationError):
            _api(gateway, "tenant-a").models.list()
        assert [r.getMessage() for r in caplog.records] == [
            f"the API keys file {path} is gone: none of its keys is accepted until it is back"
        ]
        _write_keys(path, {k: v for k, v in keys.items() if k != "tenant-a"})
        assert sorted(m.id for m in _api(gateway, "tenant-b").models.list()) == sorted(keys["tenant-b"])
        with pytest.raises(openai.AuthenticationError):
            _api(gateway, "tenant-a").models.list()
    finally:
        _write_keys(path, keys)
    assert [m.id for m in _api(gateway, "tenant-a").models.list()] == ["smile"]


def test_another_models_tokenizer_answers_nothing_and_is_never_ready(
    triton, model, tmp_path: Path, caplog
) -> None:
    """`ftprefix openai` learns the model's vocabulary from Triton only once it answers, so a
    tokenizer giving ids the model has no embedding for (serve and triton-repo refuse it at start)
    cannot be refused at start. It answered before, from token ids the model was not trained
    with. Now every request and /health are a 503 naming nothing internal, so a rollout with the
    wrong tokenizer never gets ready, and the log says why once, naming both."""
    vocab = int(json.loads((model["hf"] / "config.json").read_text())["vocab_size"])
    other = another_models_tokenizer(model["hf"], tmp_path / "other-tokenizer", vocab)
    caplog.set_level(logging.INFO, logger="ftprefix.gateway")
    server, url = _gateway(triton.grpc_url, other)
    try:
        api = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        for ask in (
            lambda: api.completions.create(model=BASE, prompt="the cat", max_tokens=2),
            lambda: api.completions.create(model="smile", prompt=[[1, 2]], max_tokens=2),
            lambda: api.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "hi"}]),
            lambda: api.completions.create(model=BASE, prompt="the cat", max_tokens=2, stream=True),
        ):
            with pytest.raises(openai.InternalServerError) as refused:
                ask()
            answer = refused.value.response
            assert answer.status_code == 503 and answer.headers["retry-after"].isdigit()
            error = answer.json()["error"]
            assert error["code"] == "model_server_unavailable"
            assert error["message"] == (
                f"this gateway cannot serve the model now (request id {answer.headers['x-request-id']}); "
                "try again later"
            )
        health = httpx.get(url.removesuffix("/v1") + "/health")
        assert health.status_code == 503 and health.json()["error"]["code"] == "model_server_unavailable"
        assert [r.getMessage() for r in caplog.records if r.name.startswith("ftprefix.gateway")] == [
            f"the tokenizer {other} gives token ids up to {vocab + 3}, and the model at {triton.grpc_url} "
            f"has embeddings for ids 0 to {vocab - 1} only: it is another model's tokenizer, and every "
            "request is a 503 until the gateway runs with the model's own --tokenizer"
        ]
    finally:
        server.should_exit = True


@pytest.mark.parametrize(
    ("text", "said"),
    [
        pytest.param('{"k": "everything-but-a-list"}', "key number 1", id="tasks-not-a-list"),
        pytest.param("k: [smile]\n", "is not JSON (Expecting value: line 1 column 1 (char 0))", id="yaml"),
    ],
)
def test_a_bad_keys_file_stops_the_command_in_one_line(model, tmp_path: Path, capsys, text, said) -> None:
    bad = tmp_path / "keys.json"
    bad.write_text(text, encoding="utf-8")
    argv = ["openai", "--tokenizer", str(model["hf"]), "--port", str(free_port()), "--api-keys", str(bad)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and '"*"' in err and '"k"' not in err and "k:" not in err
    assert said in err


def test_a_key_no_request_can_send_stops_the_command_in_one_line(model, capsys, monkeypatch) -> None:
    """A Secret's value written as a YAML block (`api-key: |`) ends with a line break, and so did
    FTPREFIX_API_KEY: the gateway started, and answered every request 401."""
    monkeypatch.setenv("FTPREFIX_API_KEY", "s3cret-key\n")
    argv = ["openai", "--tokenizer", str(model["hf"]), "--port", str(free_port())]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        "ftprefix openai: error: --api-key (or FTPREFIX_API_KEY) cannot be sent in an Authorization "
        "header: it begins or ends with a space or a line break\n"
    )


# -- chat --------------------------------------------------------------------------------------


def _rendered(model: dict, template: str = TEMPLATE, messages: list = MESSAGES) -> str:
    """The prompt transformers' own apply_chat_template makes of the messages (the reference)."""
    tokenizer = AutoTokenizer.from_pretrained(str(model["hf"]))
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )


@pytest.mark.parametrize("task", [BASE, *TASKS])
def test_chat_equals_completions_on_the_rendered_prompt(gateway, model, task) -> None:
    api = _api(gateway, ADMIN)
    prompt = _rendered(model)
    assert prompt.startswith("<|endoftext|><system>Be short.<|endoftext|>\n") and prompt.endswith(
        "<assistant>"
    )
    want = api.completions.create(model=task, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
    chat = api.chat.completions.create(model=task, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == want.choices[0].text
    assert chat.choices[0].finish_reason == want.choices[0].finish_reason
    assert chat.usage.model_dump() == want.usage.model_dump()
    same = api.chat.completions.create(
        model=task, messages=MESSAGES, max_completion_tokens=MAX_TOKENS, temperature=0, stop=["zzz"]
    )
    assert same.choices[0].message.content == want.choices[0].text
    chunks = list(
        api.chat.completions.create(
            model=task,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        want.choices[0].finish_reason
    ]
    assert chunks[-1].usage.prompt_tokens == want.usage.prompt_tokens


def test_the_tokenizers_own_template_and_no_template(triton, model, tmp_path: Path) -> None:
    own = tmp_path / "with-template"
    copy_tokenizer_files(model["hf"], own)
    config = json.loads((own / "tokenizer_config.json").read_text())
    config["chat_template"] = TEMPLATE.replace("<", "[").replace(">", "]")
    (own / "tokenizer_config.json").write_text(json.dumps(config))
    for directory, has_template in ((own, True), (model["hf"], False)):
        server, url = _gateway(triton.grpc_url, directory)
        try:
            api = openai.OpenAI(base_url=url, api_key="open", max_retries=0)
            if has_template:
                want = api.completions.create(
                    model="story",
                    prompt=_rendered(model, config["chat_template"]),
                    max_tokens=4,
                    temperature=0,
                )
                chat = api.chat.completions.create(
                    model="story", messages=MESSAGES, max_tokens=4, temperature=0
                )
                assert chat.choices[0].message.content == want.choices[0].text
            else:
                with pytest.raises(openai.BadRequestError) as refused:
                    api.chat.completions.create(model="story", messages=MESSAGES, max_tokens=4)
                message = refused.value.body["message"]
                assert "no chat template" in message and "--chat-template" not in message  # operator: log
                assert refused.value.body["param"] == "messages"
        finally:
            server.should_exit = True


def test_the_rinna_instruction_template_renders_rinnas_format(model) -> None:
    template = assets.asset("chat-templates/rinna-instruction.jinja").read_text(encoding="utf-8")
    messages = [
        {"role": "user", "content": "日本のおすすめの観光地を教えてください。"},
        {"role": "assistant", "content": "富士山です。"},
        {"role": "user", "content": "ほかには?"},
    ]
    prompt = _rendered(model, template, messages)
    speakers = {"user": "ユーザー", "assistant": "システム"}
    turns = [f"{speakers[m['role']]}: {m['content']}" for m in messages]
    assert prompt == "<NL>".join(turns) + "<NL>システム: "


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_count_exactly_the_requests_and_tokens_of_each_task(gateway) -> None:
    api = _api(gateway, ADMIN)
    sent = {"smile": 3, "story": 2, BASE: 1}
    before = metric_samples(gateway["root"])
    usage: dict[str, list[int]] = {m: [0, 0] for m in sent}
    for model, count in sent.items():
        for i in range(count):
            done = api.completions.create(
                model=model, prompt=PROMPT[: 5 + i], max_tokens=MAX_TOKENS, temperature=0
            )
            usage[model][0] += done.usage.prompt_tokens
            usage[model][1] += done.usage.completion_tokens
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="no-such-task", prompt=PROMPT, max_tokens=1)
    after = metric_samples(gateway["root"])
    for model, count in sent.items():
        assert metric_delta(before, after, "ftprefix_requests_total", model=model, status="200") == count
        assert metric_delta(before, after, "ftprefix_prompt_tokens_total", model=model) == usage[model][0]
        assert metric_delta(before, after, "ftprefix_generation_tokens_total", model=model) == usage[model][1]
        assert metric_delta(before, after, "ftprefix_request_duration_seconds_count", model=model) == count
    assert metric_delta(before, after, "ftprefix_requests_total", model="shout", status="200") == 0
    assert metric_delta(before, after, "ftprefix_requests_total", model="", status="404") == 1


# -- log probabilities ---------------------------------------------------------------------------


def test_logprobs_are_ft_output_log_probs(gateway, triton, model) -> None:
    api = _api(gateway, ADMIN)
    done = api.completions.create(
        model="shout", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.8, top_p=0.9, seed=7, logprobs=0
    )
    choice = done.choices[0]
    assert "".join(choice.logprobs.tokens) == choice.text
    assert choice.logprobs.text_offset == [
        sum(map(len, choice.logprobs.tokens[:i])) for i in range(len(choice.logprobs.tokens))
    ]
    # the same request straight to the fastertransformer model: FT's output_log_probs
    tokenizer = AutoTokenizer.from_pretrained(str(model["hf"]))
    ids = tokenizer.encode(PROMPT, add_special_tokens=False)
    arrays = {
        protocol.INPUT_IDS: np.array([ids], dtype=np.uint32),
        protocol.INPUT_LENGTHS: np.array([[len(ids)]], dtype=np.uint32),
        protocol.REQUEST_OUTPUT_LEN: np.array([[MAX_TOKENS]], dtype=np.uint32),
        protocol.TEMPERATURE: np.array([[0.8]], dtype=np.float32),
        protocol.RUNTIME_TOP_P: np.array([[0.9]], dtype=np.float32),
        protocol.RUNTIME_TOP_K: np.array([[0]], dtype=np.uint32),
        protocol.RANDOM_SEED: np.array([[7]], dtype=np.uint64),
        protocol.IS_RETURN_LOG_PROBS: np.array([[True]], dtype=bool),
        protocol.TASK_IDS: np.array([[list(TASKS).index("shout")]], dtype=np.uint32),
    }
    with grpcclient.InferenceServerClient(triton.grpc_url) as raw:
        result = raw.infer(protocol.FT_MODEL, tensors(arrays))
    n = done.usage.completion_tokens
    generated = result.as_numpy(protocol.OUTPUT_IDS)[0, 0, len(ids) : len(ids) + n].tolist()
    assert tokenizer.decode(generated, skip_special_tokens=True) == choice.text
    expected = result.as_numpy(protocol.OUTPUT_LOG_PROBS)[0, 0, :n].tolist()
    assert choice.logprobs.token_logprobs == pytest.approx(expected, abs=0)
    assert any(v < 0 for v in expected)  # sampled: real log probabilities
    chat = api.chat.completions.create(
        model="shout", messages=MESSAGES, max_tokens=3, temperature=0.8, seed=7, logprobs=True
    )
    assert "".join(c.token for c in chat.choices[0].logprobs.content) == chat.choices[0].message.content
    for refused, param in (
        (lambda: api.completions.create(model="shout", prompt=PROMPT, max_tokens=2, logprobs=2), "logprobs"),
        (
            lambda: api.chat.completions.create(
                model="shout", messages=MESSAGES, max_tokens=2, logprobs=True, top_logprobs=2
            ),
            "top_logprobs",
        ),
    ):
        with pytest.raises(openai.BadRequestError) as bad:
            refused()
        assert bad.value.body["param"] == param and "alternatives" in bad.value.body["message"]


# -- OpenAI's error body for everything ----------------------------------------------------------


def test_every_error_has_openais_body(gateway) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    for content in (b'{"model": "smile", "prompt": "\xff\xfe"}', b"{not json", b""):
        raw = httpx.post(gateway["url"] + "/completions", content=content, headers=headers)
        assert raw.status_code == 400, raw.text
        assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
    missing = httpx.get(gateway["url"] + "/no-such-route", headers=headers)
    assert missing.status_code == 404 and "error" in missing.json()
    wrong = httpx.get(gateway["url"] + "/completions", headers=headers)
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_the_access_log_has_a_line_per_request_with_its_id_tenant_model_status_and_tokens(
    triton, model, caplog
) -> None:
    keys_file = model["root"] / "access-keys.json"
    _write_keys(keys_file, {"alpha-key": {"tenant": "alpha", "tasks": ["smile"]}})
    prompt_tokens = len(
        AutoTokenizer.from_pretrained(str(model["hf"])).encode(PROMPT, add_special_tokens=False)
    )
    with gateway_log(caplog):
        for access_log in (True, False):
            server = make_server(
                GatewaySettings(
                    triton.grpc_url,
                    model["hf"],
                    BASE,
                    api_keys_file=keys_file,
                    **({"access_log": True} if access_log else {}),  # off by default
                ),
                "127.0.0.1",
                free_port(),
            )
            serving = start_in_thread(server)
            url = f"http://127.0.0.1:{server.config.port}/v1/completions"
            alpha = {"Authorization": "Bearer alpha-key"}
            body = {"model": "smile", "prompt": PROMPT, "max_tokens": MAX_TOKENS, "ignore_eos": True}
            sent = [
                ("acc-whole", alpha, body),
                ("acc-stream", alpha, {**body, "stream": True}),
                ("acc-404", alpha, {**body, "model": "shout"}),
                ("acc-401", {"Authorization": "Bearer wrong"}, body),
            ]
            statuses = [
                httpx.post(url, json=request, headers={**auth, "x-request-id": rid}).status_code
                for rid, auth, request in sent
            ]
            assert statuses == [200, 200, 404, 401]
            server.should_exit = True
            serving.join(timeout=60)  # every answer has ended: its line is written
            lines = [r.getMessage() for r in caplog.records if r.name == "ftprefix.gateway.access"]
            if not access_log:
                assert lines == []
                continue
            assert all(re.search(r" seconds=\d+\.\d{3} ", line) for line in lines), lines
            shapes = [re.sub(r" seconds=\S+ ", " seconds={} ", line) for line in lines]
            assert sorted(shapes) == sorted(
                [
                    *(
                        f"access: request={rid} tenant=alpha model=smile status=200 seconds={{}} "
                        f"prompt_tokens={prompt_tokens} completion_tokens={MAX_TOKENS}"
                        for rid in ("acc-whole", "acc-stream")
                    ),
                    "access: request=acc-404 tenant=alpha model=- status=404 seconds={} "
                    "prompt_tokens=0 completion_tokens=0",
                    "access: request=acc-401 tenant=- model=- status=401 seconds={} "
                    "prompt_tokens=0 completion_tokens=0",
                ]
            ), "\n".join(lines)
            caplog.clear()


# -- browsers ------------------------------------------------------------------------------------

PAGE = "https://chat.example.com"


def _preflight(url: str, origin: str) -> httpx.Response:
    """What a browser sends before a page's POST with a key (the Fetch standard's CORS preflight):
    no key, the method and the headers the POST will carry."""
    return httpx.options(
        url,
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,x-stainless-os",
        },
    )


def test_web_pages_of_a_cors_origin_may_call_the_api_and_read_its_answers(triton, model) -> None:
    """A browser lets a page of one origin call another only when the answers say so: its
    preflight (no key) answered with the allowed method and headers, and every answer, errors and
    streams included, naming the page's origin. Without --cors-origin, nothing allows it."""
    server, url = _gateway(
        triton.grpc_url, model["hf"], triton_http_url=triton.http_url, api_keys=(ADMIN,), cors_origins=(PAGE,)
    )
    plain, plain_url = _gateway(triton.grpc_url, model["hf"], api_keys=(ADMIN,))
    try:
        allowed = _preflight(url + "/chat/completions", PAGE)
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["access-control-allow-origin"] == PAGE
        assert "POST" in allowed.headers["access-control-allow-methods"]
        granted = allowed.headers["access-control-allow-headers"].lower()
        assert {"authorization", "content-type", "x-stainless-os"} <= set(granted.replace(" ", "").split(","))
        # another origin's page: its preflight fails, so the browser never sends the POST
        other = _preflight(url + "/chat/completions", "https://elsewhere.example.org")
        assert other.status_code >= 400 and "access-control-allow-origin" not in other.headers

        page = {"origin": PAGE, "authorization": f"Bearer {ADMIN}"}
        body = {"model": "smile", "prompt": PROMPT, "max_tokens": 2, "temperature": 0}
        answers = {
            "whole": httpx.post(url + "/completions", json=body, headers=page),
            "streamed": httpx.post(url + "/completions", json={**body, "stream": True}, headers=page),
            "models": httpx.get(url + "/models", headers=page),
            "no key": httpx.post(url + "/completions", json=body, headers={"origin": PAGE}),
            "bad request": httpx.post(url + "/completions", json={**body, "max_tokens": "2"}, headers=page),
        }
        assert {name: a.status_code for name, a in answers.items()} == {
            "whole": 200,
            "streamed": 200,
            "models": 200,
            "no key": 401,
            "bad request": 400,
        }
        for name, answer in answers.items():
            assert answer.headers.get("access-control-allow-origin") == PAGE, name
            exposed = answer.headers.get("access-control-expose-headers", "").lower()
            assert "x-request-id" in exposed, name  # the id an operator asks for, readable by the page
        assert answers["streamed"].text.rstrip().endswith("data: [DONE]")

        # without --cors-origin: no preflight passes, no answer names an origin
        refused = _preflight(plain_url + "/chat/completions", PAGE)
        assert refused.status_code >= 400 and "access-control-allow-origin" not in refused.headers
        answer = httpx.get(
            plain_url + "/models", headers={"origin": PAGE, "authorization": f"Bearer {ADMIN}"}
        )
        assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
    finally:
        server.should_exit = plain.should_exit = True


def test_a_cors_origin_must_be_an_origin(triton, model, capsys) -> None:
    for value in ("chat.example.com", "https://chat.example.com/", "https://chat.example.com/app"):
        argv = ["openai", "--url", triton.grpc_url, "--tokenizer", str(model["hf"]), "--cors-origin", value]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"ftprefix openai: error: --cors-origin {value!r} is not an origin"), err
        assert len(err.splitlines()) == 1
