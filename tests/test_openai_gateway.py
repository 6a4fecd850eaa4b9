"""The OpenAI-compatible API in front of a real `ftprefix serve`, called with the official `openai`
package: tasks are models, each completion equals the client's greedy answer for that task."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from gateway_support import gateway_log
from serving_support import convert_toy
from transformers import AutoTokenizer

from ftprefix import cli
from ftprefix.client import Client
from ftprefix.demo import toy
from ftprefix.gateway.app import GatewaySettings
from ftprefix.gateway.run import make_server, start_in_thread
from ftprefix.serving.server import EmbeddedServer, free_port

TASKS = {"smile": 3, "shout": 5, "story": 2}
BASE = "toy-base"
PROMPTS = ["The quick brown fox", "Hello world! How", "One base model serves", "the cat"]
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    return convert_toy(tmp_path_factory.mktemp("openai"), TASKS, seed=11)


def _gateway(triton_url: str, hf: Path, **settings):
    server = make_server(GatewaySettings(triton_url, hf, BASE, **settings), "127.0.0.1", free_port())
    start_in_thread(server)
    return server, f"http://127.0.0.1:{server.config.port}/v1"


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "streaming"])
def stack(request, model):
    with EmbeddedServer(model["ft"], streaming=request.param, watch_interval=None, stop_timeout=0) as triton:
        # over Triton's HTTP endpoint, as the CPU deployments run it: whole answers, and streams
        # through generate_stream (tests/test_openai_api.py streams over gRPC as well)
        gateway, base_url = _gateway(triton.grpc_url, model["hf"], triton_http_url=triton.http_url)
        try:
            yield {"triton": triton, "url": base_url, "streaming": request.param}
        finally:
            gateway.should_exit = True


@pytest.fixture(scope="module")
def greedy(stack, model):
    """The answers of ftprefix.client for (prompt, task): what every completion must equal."""
    answers: dict[tuple[str, str | None], str] = {}
    with Client(stack["triton"].grpc_url, tokenizer=model["hf"]) as client:
        for task in [None, *TASKS]:
            for prompt in PROMPTS:
                answers[(prompt, task)] = (
                    client.generate(prompt, task=task, max_new_tokens=MAX_TOKENS).text or ""
                )
    assert len({answers[(PROMPTS[0], t)] for t in [None, *TASKS]}) == len(TASKS) + 1  # tasks differ
    return answers


def _openai(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["url"], api_key="unused", max_retries=0)


def test_models_are_the_base_and_every_task(stack) -> None:
    models = _openai(stack).models.list()
    assert [m.id for m in models.data] == [BASE, *TASKS]
    assert _openai(stack).models.retrieve("shout").id == "shout"


@pytest.mark.parametrize("task", [None, *TASKS])
def test_completion_equals_the_clients_greedy_answer(stack, greedy, task) -> None:
    done = _openai(stack).completions.create(
        model=task or BASE, prompt=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0
    )
    assert done.choices[0].text == greedy[(PROMPTS[0], task)]
    assert done.choices[0].finish_reason in ("length", "stop")
    assert done.usage.completion_tokens <= MAX_TOKENS and done.usage.prompt_tokens > 0
    assert done.object == "text_completion" and done.model == (task or BASE)


def test_a_list_of_prompts_is_one_batch(stack, greedy) -> None:
    done = _openai(stack).completions.create(
        model="story", prompt=PROMPTS, max_tokens=MAX_TOKENS, temperature=0
    )
    assert [c.index for c in done.choices] == list(range(len(PROMPTS)))
    assert [c.text for c in done.choices] == [greedy[(p, "story")] for p in PROMPTS]


def test_streaming_gives_the_same_text(stack, greedy, model) -> None:
    chunks = list(
        _openai(stack).completions.create(
            model="smile",
            prompt=PROMPTS[:2],
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = ["", ""]
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts == [greedy[(p, "smile")] for p in PROMPTS[:2]]
    finished = [c for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert sorted(c.index for c in finished) == [0, 1]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    tokenizer = AutoTokenizer.from_pretrained(str(model["hf"]))
    assert usage.prompt_tokens == sum(len(tokenizer(p)["input_ids"]) for p in PROMPTS[:2])
    if stack["streaming"]:
        assert len(chunks) > 3  # really streamed, not one answer at the end


def test_64_concurrent_completions_over_mixed_tasks(stack, greedy) -> None:
    jobs = [(PROMPTS[i % len(PROMPTS)], [None, *TASKS][i % (len(TASKS) + 1)]) for i in range(64)]

    async def run_all() -> list[str]:
        async with openai.AsyncOpenAI(base_url=stack["url"], api_key="unused", max_retries=0) as client:
            done = await asyncio.gather(
                *(
                    client.completions.create(model=t or BASE, prompt=p, max_tokens=MAX_TOKENS, temperature=0)
                    for p, t in jobs
                )
            )
        return [d.choices[0].text for d in done]

    assert asyncio.run(run_all()) == [greedy[job] for job in jobs]


def test_errors_have_openais_status_and_body(stack, model) -> None:
    client = _openai(stack)
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="nope", prompt="hi", max_tokens=2)
    assert missing.value.body["code"] == "model_not_found" and missing.value.body["param"] == "model"
    for params, param in (
        ({"n": 129}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 3.0}, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"echo": True}, "echo"),
    ):
        with pytest.raises(openai.BadRequestError) as bad:
            client.completions.create(model="smile", prompt="hi", **{"max_tokens": 2, **params})
        assert bad.value.status_code == 400 and bad.value.body["param"] == param
    raw = httpx.post(stack["url"] + "/completions", json={"prompt": "hi"})
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "model"


def test_triton_down_is_503_and_health_says_so(model) -> None:
    gateway, base_url = _gateway(f"127.0.0.1:{free_port()}", model["hf"])
    try:
        health = httpx.get(base_url.removesuffix("/v1") + "/health")
        assert health.status_code == 503
        with pytest.raises(openai.InternalServerError) as down:
            openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0).completions.create(
                model=BASE, prompt="hi", max_tokens=2
            )
        # the caller learns that the model server is away, not where it is or what the operator should do
        body = json.dumps(down.value.body)
        assert down.value.status_code == 503 and "not available" in body
        assert "127.0.0.1" not in body and "ftprefix serve" not in body and "--url" not in body
        assert down.value.response.headers["retry-after"] == "1"
        assert down.value.response.headers["x-request-id"]
    finally:
        gateway.should_exit = True


def test_a_gateway_started_before_triton_tries_it_every_second_and_logs_the_changes(model, caplog) -> None:
    """As compose or Kubernetes may start them, or after Triton restarts: the gateway first,
    Triton later. gRPC waits longer after each failed connection, up to two minutes, so a Triton
    back after a long outage went unseen that long; the gateway must try it at least once a second
    however long it was away. Its readiness probes' failures are logged when what they find changes,
    not at every probe."""
    away = socket.create_server(("127.0.0.1", 0))  # Triton's port, while Triton is away
    triton_port = away.getsockname()[1]
    attempts: list[float] = []

    def refuse() -> None:  # each connection the gateway opens: noted, then closed at once
        while True:
            try:
                conn, _ = away.accept()
            except OSError:
                return
            attempts.append(time.monotonic())
            conn.close()

    refusing = threading.Thread(target=refuse, daemon=True)
    refusing.start()
    gateway, base_url = _gateway(f"127.0.0.1:{triton_port}", model["hf"])
    health = base_url.removesuffix("/v1") + "/health"
    try:
        with gateway_log(caplog):
            began = time.monotonic()
            while time.monotonic() - began < 8:  # readiness probes, as fast as they answer
                assert httpx.get(health).status_code == 503
            ended = time.monotonic()
            away.close()
            refusing.join()
            probes_down = [r.getMessage() for r in caplog.records if r.getMessage().startswith("health:")]
            with EmbeddedServer(
                model["ft"], grpc_port=triton_port, watch_interval=None, stop_timeout=0, instances=1
            ):
                up = time.monotonic()
                while httpx.get(health).status_code != 200:  # bounded: asserted just below
                    assert time.monotonic() - up < 10
                answer = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0).completions.create(
                    model="smile", prompt=PROMPTS[0], max_tokens=2, temperature=0
                )
                assert answer.usage.completion_tokens == 2
            probes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("health:")]
    finally:
        gateway.should_exit = True
    attempts = [t for t in attempts if t < ended]  # the probes' time only
    gaps = [later - earlier for earlier, later in itertools.pairwise([*attempts, ended])]
    # a second, give or take gRPC's 20% jitter and a busy machine's scheduling; gRPC's own backoff
    # (x1.6 from 1 s) tries 4 or 5 times in 8 s, then waits 3.9 s
    assert len(attempts) >= 6 and max(gaps) < 2.5, [round(gap, 2) for gap in gaps]
    assert len(probes_down) == 1 and "not ready" in probes_down[0] and str(triton_port) in probes_down[0]
    assert probes == [*probes_down, "health: the model server is ready again"]


@pytest.mark.parametrize("stack", [False], ids=["plain"], indirect=True)  # Triton's HTTP port, once
def test_a_gateway_given_tritons_http_port_as_url_says_so_in_its_log(stack, model, caplog) -> None:
    """--url takes Triton's gRPC port; given its HTTP port, the gateway is never ready, and its log
    says why once, not only that no server is reachable there."""
    http = stack["triton"].http_url.removeprefix("http://")
    said_it = threading.Event()  # the look at the port runs on a thread of its own, beside the probes

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "answers HTTP/1.1" in record.getMessage():
                said_it.set()

    watch = Watch()
    logging.getLogger("ftprefix.gateway").addHandler(watch)
    gateway, base_url = _gateway(http, model["hf"])
    try:
        with gateway_log(caplog):
            assert httpx.get(base_url.removesuffix("/v1") + "/health").status_code == 503
            assert said_it.wait(timeout=10), [r.getMessage() for r in caplog.records]
    finally:
        gateway.should_exit = True
        logging.getLogger("ftprefix.gateway").removeHandler(watch)
    said = [r.getMessage() for r in caplog.records if "answers HTTP/1.1" in r.getMessage()]
    assert said == [
        f"health: {http} answers HTTP/1.1, not gRPC: it is an HTTP port (Triton's HTTP endpoint, 8000 by "
        "default, or the OpenAI API); pass Triton's gRPC port (8001 by default) as --url"
    ]


def test_health_is_ok_with_triton_up(stack) -> None:
    assert httpx.get(stack["url"].removesuffix("/v1") + "/health").json() == {"status": "ok"}


def test_a_task_added_on_the_server_becomes_a_model_and_a_removed_one_is_gone(
    model, tmp_path: Path, capsys
) -> None:
    import shutil
    import time

    shutil.copytree(model["ft"], tmp_path / "ft")
    torch.save(toy.random_prefix(4, 2, 64, seed=99), tmp_path / "fresh.pt")
    # one engine instance: every reload starts each instance's process again
    with EmbeddedServer(tmp_path / "ft", watch_interval=0.2, stop_timeout=0, instances=1) as triton:
        gateway, base_url = _gateway(triton.grpc_url, model["hf"], triton_http_url=triton.http_url)
        try:
            client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
            assert "fresh" not in [m.id for m in client.models.list().data]
            assert (
                cli.main(["tasks", "add", str(tmp_path / "ft"), "--prefix", f"fresh={tmp_path / 'fresh.pt'}"])
                == 0
            )
            deadline = time.monotonic() + 60
            while "fresh" not in [m.id for m in client.models.list().data] and time.monotonic() < deadline:
                time.sleep(0.2)  # bounded poll for the server's reload; asserted next
            assert [m.id for m in client.models.list().data] == [BASE, *TASKS, "fresh"]
            with Client(triton.grpc_url, tokenizer=model["hf"]) as direct:
                want = direct.generate(PROMPTS[1], task="fresh", max_new_tokens=MAX_TOKENS).text
            done = client.completions.create(
                model="fresh", prompt=PROMPTS[1], max_tokens=MAX_TOKENS, temperature=0
            )
            assert done.choices[0].text == want
            # removed again: no longer a model, and a request naming it is OpenAI's 404
            assert cli.main(["tasks", "remove", str(tmp_path / "ft"), "fresh"]) == 0
            deadline = time.monotonic() + 60
            while "fresh" in [m.id for m in client.models.list().data] and time.monotonic() < deadline:
                time.sleep(0.2)  # bounded poll for the server's reload; asserted next
            assert [m.id for m in client.models.list().data] == [BASE, *TASKS]
            with pytest.raises(openai.NotFoundError) as gone:
                client.completions.create(model="fresh", prompt=PROMPTS[1], max_tokens=MAX_TOKENS)
            assert gone.value.body["code"] == "model_not_found"
            # and the server said what each change did, once it had loaded the model again
            said: list[str] = []
            while len(said) < 2 and time.monotonic() < deadline:
                said += [line for line in capsys.readouterr().out.splitlines() if "loaded again" in line]
                time.sleep(0.2)  # bounded poll for the watcher's lines; asserted next
            loaded = "fastertransformer loaded again in S"
            assert [re.sub(r"in \d+\.\d s$", "in S", line) for line in said] == [
                f"ftprefix serve: tasks: +fresh ({len(TASKS) + 1} in all); {loaded}",
                f"ftprefix serve: tasks: -fresh ({len(TASKS)} in all); {loaded}",
            ]
        finally:
            gateway.should_exit = True


def test_an_idle_gateway_wakes_once_a_second_and_stops_when_told(model) -> None:
    import time

    gateway = make_server(
        GatewaySettings(f"127.0.0.1:{free_port()}", model["hf"], BASE), "127.0.0.1", free_port()
    )
    ticks: list[float] = []
    on_tick = gateway.on_tick

    async def counted(counter: int) -> bool:
        ticks.append(time.monotonic())
        return await on_tick(counter)

    gateway.on_tick = counted  # type: ignore[method-assign]
    thread = start_in_thread(gateway)
    time.sleep(2.5)  # the idle time being measured, not a wait for something
    idle_ticks = len(ticks)
    asked = time.monotonic()
    gateway.should_exit = True  # from another thread, as a test or an embedding program stops it
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert idle_ticks <= 4  # uvicorn's own loop looks 10 times a second: 25 here
    assert ticks[-1] >= asked and len(ticks) == idle_ticks + 1  # told, it looked once more and left
