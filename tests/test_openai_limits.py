"""Tenants share fairly: per-key limits in the keys file, OpenAI's 429s and headers (which the
official `openai` client obeys on its own), per-tenant metrics, and fair admission in front of a
real `ftprefix serve`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import httpx
import openai
import pytest
from gateway_support import metric_delta, metric_samples
from prometheus_client.parser import text_string_to_metric_families
from serving_support import convert_toy, requests_counted, rows_counted

from ftprefix import cli
from ftprefix.errors import UserError
from ftprefix.gateway.app import GatewaySettings
from ftprefix.gateway.auth import KeyPolicy, parse_keys_file
from ftprefix.gateway.errors import ApiError
from ftprefix.gateway.limits import Limits
from ftprefix.gateway.run import make_server, start_in_thread
from ftprefix.serving.batching import MAX_QUEUE_DELAY_LIMIT_US
from ftprefix.serving.interface import MAX_BATCH_SIZE
from ftprefix.serving.server import EmbeddedServer, free_port

TASKS = {"smile": 3, "shout": 5}
BASE = "toy-base"
PROMPT = "The quick brown fox"
KEYS = {
    "k-rate": {"tenant": "acme", "tasks": "*", "requests_per_minute": 3},
    "k-tokens": {"tenant": "tok", "tasks": ["smile"], "tokens_per_minute": 60},
    "k-capped": {"tenant": "capped", "tasks": "*", "max_tokens": 5},
    "k-conc": {"tenant": "conc", "tasks": "*", "max_concurrent": 4},
    "k-one": {"tenant": "one", "tasks": "*", "max_concurrent": 1},
    "k-free": ["smile", BASE],  # the old form: a list of tasks, no limits
    "k-flood": {"tenant": "flood", "tasks": "*"},
    "k-calm": {"tenant": "calm", "tasks": "*"},
    "k-heavy": {"tenant": "heavy", "tasks": "*", "weight": 3},
    "k-light": {"tenant": "light", "tasks": "*"},
}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("limits")
    (root / "keys.json").write_text(json.dumps(KEYS))
    return {**convert_toy(root, TASKS, seed=3), "keys": root / "keys.json"}


@pytest.fixture(scope="module")
def triton(model):
    with EmbeddedServer(model["ft"], watch_interval=None, stop_timeout=0) as server:
        yield server


def _gateway(triton_url: str, hf: Path, keys: Path, **settings):
    server = make_server(
        GatewaySettings(triton_url, hf, BASE, api_keys_file=keys, **settings), "127.0.0.1", free_port()
    )
    start_in_thread(server)
    return server, f"http://127.0.0.1:{server.config.port}"


@pytest.fixture(scope="module")
def gateway(triton, model):
    server, url = _gateway(triton.grpc_url, model["hf"], model["keys"], triton_http_url=triton.http_url)
    try:
        yield url
    finally:
        server.should_exit = True


def _post(url: str, key: str, **body) -> httpx.Response:
    request = {"model": BASE, "prompt": PROMPT, "max_tokens": 2, "temperature": 0, **body}
    return httpx.post(
        url + "/v1/completions", json=request, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )


# -- the keys file ------------------------------------------------------------------------------


def test_the_keys_file_takes_limits_and_the_old_forms(model, tmp_path: Path) -> None:
    policies = {p.tenant: p for p in parse_keys_file(model["keys"]).values()}
    saved_on_windows = tmp_path / "keys.json"  # a byte order mark first, as PowerShell's Out-File writes
    saved_on_windows.write_bytes(b"\xef\xbb\xbf" + model["keys"].read_bytes().replace(b"\n", b"\r\n"))
    assert parse_keys_file(saved_on_windows) == parse_keys_file(model["keys"])
    assert policies["acme"].requests_per_minute == 3 and policies["acme"].scope.models is None
    assert policies["tok"].tokens_per_minute == 60 and policies["tok"].allows("smile")
    assert not policies["tok"].allows("shout")
    assert policies["key-6"].allows(BASE) and not policies["key-6"].limited  # named by its place


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"tenant": "a", "tasks": "*", "requests_per_minute": 0},
            "requests_per_minute must be a whole number",
        ),
        ({"tenant": "a", "tasks": "*", "max_concurrent": True}, "max_concurrent must be a whole number"),
        ({"tenant": "a", "tasks": "*", "max_tokens": "5"}, "max_tokens must be a whole number"),
        ({"tenant": "a b", "tasks": "*"}, "tenant must be 1 to 64"),
        ({"tenant": "a\n", "tasks": "*"}, "tenant must be 1 to 64"),  # a line of its own in the metrics
        ({"tenant": "a", "tasks": "*", "rate": 5}, "unknown setting 'rate'"),
        ({"tenant": "a", "tasks": "*", "weight": 0}, "weight must be a whole number from 1 to 1000"),
        ({"tenant": "a", "tasks": "*", "weight": 1.5}, "weight must be a whole number from 1 to 1000"),
        ({"tenant": "a", "tasks": "*", "weight": 1001}, "weight must be a whole number from 1 to 1000"),
        ({"tenant": "a"}, 'give "tasks"'),
    ],
)
def test_a_bad_entry_is_refused_naming_the_key_by_number_only(
    tmp_path: Path, entry, message, capsys, model
) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"k-good": "*", "s3cret-k3y": entry}))
    with pytest.raises(UserError) as refused:
        parse_keys_file(path)
    assert "key number 2" in str(refused.value) and message in str(refused.value)
    assert "s3cret" not in str(refused.value)
    argv = ["openai", "--tokenizer", str(model["hf"]), "--port", str(free_port()), "--api-keys", str(path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "s3cret" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            '{"s3cret-a": ["smile"], "k-good": "*", "s3cret-a": "*"}',
            "key number 1 is given again further on; give each key once",
            id="a-key-twice",  # json.loads kept the later one: every model, where smile was meant
        ),
        pytest.param(
            '{"k-good": "*", "s3cret-b": {"tasks": ["smile"], "tenant": "t", "tasks": "*"}}',
            "key number 2: setting 'tasks' is given twice; give it once",
            id="a-setting-twice",
        ),
        pytest.param(
            '{"k-good": "*", "s3cret-c\\n": "*"}',
            "key number 2 cannot be sent in an Authorization header: it begins or ends with a space or "
            "a line break",
            id="a-line-break-at-the-end",
        ),
        pytest.param(
            '{"k-good": "*", "s3cret-d\\u00e9": "*"}',
            "key number 2 cannot be sent in an Authorization header: it has a letter outside ASCII",
            id="not-ascii",
        ),
        pytest.param(
            '{"k-good": "*", "s3cret\\te": "*"}',
            "key number 2 cannot be sent in an Authorization header: it has a control character",
            id="a-tab",
        ),
    ],
)
def test_a_keys_file_that_would_not_do_what_it_says_is_refused_naming_keys_by_number(
    tmp_path: Path, text: str, message: str
) -> None:
    """Each of these was taken without a word: a key given twice as the last one says, and a key
    no request can match (an HTTP client sends no line break in a header, nor a letter outside
    Latin-1, and the server reads a header's bytes as Latin-1) as a key that answers every
    request 401."""
    path = tmp_path / "keys.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as refused:
        parse_keys_file(path)
    said = str(refused.value)
    assert said == f"{path}: {message}" or said.startswith(f"{path}: {message}"), said
    assert "s3cret" not in said


def test_limits_edited_while_a_keys_requests_run_keep_counting_them(tmp_path: Path) -> None:
    """The policies an edit of the keys file gives (as the gateway reads it again) against the
    gateway's own bookkeeping: a request admitted before the edit ends on the count the requests
    after it are checked against, so the key's max_concurrent admits again once it is done; and a
    rate whose limit the edit left alone keeps its level rather than refilling."""
    keys = tmp_path / "keys.json"

    def edited(entry: dict) -> KeyPolicy:
        keys.write_text(json.dumps({"k": {"tasks": "*", **entry}}))
        (policy,) = parse_keys_file(keys).values()
        return policy

    limits = Limits()
    running = limits.admit(edited({"tenant": "t", "max_concurrent": 1, "requests_per_minute": 3}), 10)
    after = edited({"tenant": "t", "max_concurrent": 1, "requests_per_minute": 3, "tokens_per_minute": 500})
    with pytest.raises(ApiError) as refused:  # the one running still counts
        limits.admit(after, 10)
    assert (refused.value.status, refused.value.reason) == (429, "concurrency")
    running.finish(10)
    limits.admit(after, 10).finish(10)  # it is done: the key's one place is free again
    renamed = edited(
        {"tenant": "t2", "max_concurrent": 1, "requests_per_minute": 3, "tokens_per_minute": 500}
    )
    limits.admit(renamed, 10).finish(10)
    with pytest.raises(ApiError) as refused:  # 3 per minute, the edits' requests included
        limits.admit(renamed, 10)
    assert (refused.value.status, refused.value.reason) == (429, "requests")


def test_a_weight_is_the_tenants_on_all_its_keys(tmp_path: Path) -> None:
    """A weight shares out turns between tenants, so a tenant has one: the keys that leave it out
    take the one its other keys give, and keys of one tenant that give different ones are refused,
    by number."""
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps(
            {
                "k-1": {"tenant": "gold", "tasks": "*"},
                "k-2": {"tenant": "gold", "tasks": ["smile"], "weight": 4},
                "k-3": {"tenant": "plain", "tasks": "*"},
                "k-4": "*",
            }
        )
    )
    weights = sorted((p.tenant, p.weight) for p in parse_keys_file(path).values())
    assert weights == [("gold", 4), ("gold", 4), ("key-4", 1), ("plain", 1)]
    path.write_text(
        json.dumps(
            {
                "s3cret-1": {"tenant": "gold", "tasks": "*", "weight": 4},
                "s3cret-2": {"tenant": "plain", "tasks": "*"},
                "s3cret-3": {"tenant": "gold", "tasks": "*", "weight": 2},
            }
        )
    )
    with pytest.raises(UserError) as refused:
        parse_keys_file(path)
    said = str(refused.value)
    assert "key number 3 gives tenant 'gold' weight 2, key number 1 weight 4" in said
    assert "s3cret" not in said


# -- limits -------------------------------------------------------------------------------------


def test_requests_per_minute_gives_429s_with_openais_headers_and_spares_other_keys(gateway) -> None:
    before = metric_samples(gateway)
    remaining = []
    for _ in range(3):
        fine = _post(gateway, "k-rate")
        assert fine.status_code == 200
        assert fine.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(int(fine.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [2, 1, 0]
    refused = _post(gateway, "k-rate")
    assert refused.status_code == 429
    assert (
        refused.json()["error"]["type"] == "requests"
        and refused.json()["error"]["code"] == "rate_limit_exceeded"
    )
    headers = refused.headers
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("3", "0")
    assert re.fullmatch(r"(\d+m)?[\d.]+s", headers["x-ratelimit-reset-requests"])  # OpenAI's form: 59.9s
    # one request's worth refills in 20 s (3 per minute)
    assert 19_000 <= int(headers["retry-after-ms"]) <= 20_000 and headers["retry-after"] == "20"
    assert _post(gateway, "k-free").status_code == 200  # another key: unaffected
    after = metric_samples(gateway)
    assert metric_delta(before, after, "ftprefix_tenant_requests_total", tenant="acme", status="200") == 3
    assert metric_delta(before, after, "ftprefix_tenant_requests_total", tenant="acme", status="429") == 1
    assert (
        metric_delta(before, after, "ftprefix_tenant_rate_limited_total", tenant="acme", reason="requests")
        == 1
    )


def test_tokens_per_minute_counts_prompt_and_max_tokens_and_gives_back_what_was_not_used(gateway) -> None:
    first = _post(gateway, "k-tokens", model="smile", max_tokens=30)
    assert first.status_code == 200
    prompt = first.json()["usage"]["prompt_tokens"]
    used = first.json()["usage"]["total_tokens"]
    # took prompt + 30, gave back what the answer did not use: what is left is 60 - used
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 60 - prompt - 30
    refused = _post(gateway, "k-tokens", model="smile", max_tokens=60 - used - prompt + 1)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens"
    assert refused.headers["x-ratelimit-limit-tokens"] == "60"
    assert int(refused.headers["retry-after-ms"]) > 0
    too_big = _post(gateway, "k-tokens", model="smile", max_tokens=61)
    assert too_big.status_code == 400 and too_big.json()["error"]["param"] == "max_tokens"
    assert "tokens_per_minute, 60" in too_big.json()["error"]["message"]
    choices = _post(gateway, "k-tokens", model="smile", max_tokens=20, n=3)  # max_tokens for each choice
    assert choices.status_code == 400
    assert "fewer max_tokens or choices (n)" in choices.json()["error"]["message"]


def test_a_keys_max_tokens_caps_every_request(gateway) -> None:
    over = _post(gateway, "k-capped", max_tokens=6)
    assert over.status_code == 400
    assert over.json()["error"] == {
        "message": "max_tokens is 6, above this key's cap of 5",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "invalid_value",
    }
    chat = httpx.post(
        gateway + "/v1/chat/completions",
        json={"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 9},
        headers={"Authorization": "Bearer k-capped"},
    )
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "max_completion_tokens"
    default = httpx.post(
        gateway + "/v1/completions",
        json={"model": BASE, "prompt": PROMPT, "temperature": 0, "ignore_eos": True},
        headers={"Authorization": "Bearer k-capped"},
    )
    assert default.status_code == 200 and default.json()["usage"]["completion_tokens"] == 5  # not 16


def _places(samples: dict) -> float:
    """Requests the gateway holds now: at Triton, and waiting for a place there."""
    return sum(
        samples.get((name, ()), 0.0) for name in ("ftprefix_in_flight_requests", "ftprefix_waiting_requests")
    )


def test_max_concurrent_holds_under_100_concurrent_requests(model) -> None:
    """Four requests of a key with max_concurrent 4 are in flight, then 96 more come at once:
    every one of them is a 429, and counted. The four must still be in flight when the last of the
    96 arrives, however slow the machine: they wait in Triton's batching window, a minute on this
    server, until the 96 are answered; then one request of 1,020 prompts fills their batch to the
    model's max_batch_size of 1,024, which Triton runs at once. (Stopping Triton's python stubs
    instead broke on a slow machine: Triton takes a stub that missed its heartbeat for a second for
    a dead one and fails its requests; triton-inference-server/python_backend,
    src/stub_launcher.cc, ReceiveMessageFromStub.)"""
    body = {"model": BASE, "prompt": PROMPT, "max_tokens": 2, "temperature": 0}
    fill = {**body, "prompt": [PROMPT] * (MAX_BATCH_SIZE - 4), "max_tokens": 1}

    async def flood(gateway: str) -> tuple[list[int], list[int], int]:
        url = gateway + "/v1/completions"
        key, other = {"Authorization": "Bearer k-conc"}, {"Authorization": "Bearer k-calm"}
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=100)) as client:
            holders = [asyncio.ensure_future(client.post(url, json=body, headers=key)) for _ in range(4)]
            deadline = time.monotonic() + 60
            while _places(metric_samples(gateway)) < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # bounded wait for the four to be taken in
            refused = [
                r.status_code
                for r in await asyncio.gather(*(client.post(url, json=body, headers=key) for _ in range(96)))
            ]
            filled = await client.post(url, json=fill, headers=other)
            return refused, [r.status_code for r in await asyncio.gather(*holders)], filled.status_code

    window = MAX_QUEUE_DELAY_LIMIT_US
    with EmbeddedServer(
        model["ft"], watch_interval=None, instances=1, max_queue_delay_us=window, stop_timeout=0
    ) as held:
        server, gateway = _gateway(held.grpc_url, model["hf"], model["keys"])
        try:
            refused, answered, filled = asyncio.run(flood(gateway))
            assert (answered, filled, refused) == ([200] * 4, 200, [429] * 96)
            after = metric_samples(gateway)  # a new gateway's: its counters start at 0
            rate_limited = metric_delta(
                {}, after, "ftprefix_tenant_rate_limited_total", tenant="conc", reason="concurrency"
            )
        finally:
            server.should_exit = True
    assert rate_limited == 96


def test_the_openai_client_backs_off_and_retries_on_its_own(gateway) -> None:
    statuses: list[int] = []
    http = httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]}, timeout=120)
    api = openai.OpenAI(base_url=gateway + "/v1", api_key="k-one", max_retries=3, http_client=http)
    slow = httpx.AsyncClient(timeout=120)

    async def both() -> str:
        first = asyncio.ensure_future(
            slow.post(
                gateway + "/v1/completions",
                json={
                    "model": BASE,
                    "prompt": PROMPT,
                    "max_tokens": 200,
                    "temperature": 0,
                    "ignore_eos": True,
                },
                headers={"Authorization": "Bearer k-one"},
            )
        )
        deadline = time.monotonic() + 60
        while "ftprefix_in_flight_requests 1.0" not in (await slow.get(gateway + "/metrics")).text:
            assert time.monotonic() < deadline  # bounded poll: the first request is at Triton
        second = await asyncio.to_thread(
            api.completions.create, model=BASE, prompt=PROMPT, max_tokens=2, temperature=0
        )
        assert (await first).status_code == 200
        return second.choices[0].text

    assert asyncio.run(both())
    assert statuses[0] == 429 and statuses[-1] == 200  # refused while the first ran, then served


def test_tenant_metrics_use_tenant_names_never_keys(gateway) -> None:
    text = httpx.get(gateway + "/metrics").text
    assert "ftprefix_tenant_queue_wait_seconds_bucket" in text and 'tenant="acme"' in text
    assert not [key for key in KEYS if key in text]


# -- fair admission -----------------------------------------------------------------------------


async def _answered(client: httpx.AsyncClient, url: str, key: str, finished: list[str]) -> None:
    """A short request of `key`'s, its key appended to `finished` once answered."""
    body = {"model": BASE, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    answer = await client.post(url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200
    finished.append(key)


async def _waiting_at_least(client: httpx.AsyncClient, url: str, count: int) -> None:
    """Until the gateway's own gauge counts `count` requests waiting for a place (bounded poll)."""
    deadline = time.monotonic() + 60
    while True:
        waiting = [
            s.value
            for f in text_string_to_metric_families((await client.get(url + "/metrics")).text)
            for s in f.samples
            if s.name == "ftprefix_waiting_requests"
        ]
        if waiting and waiting[0] >= count:
            return
        assert time.monotonic() < deadline


def _completion_order(url: str, flood: int) -> int:
    """Tenant "flood" sends `flood` requests at once; once they all wait for the one place at
    Triton, tenant "calm" sends one. Returns how many of flood's requests finished before calm's."""
    finished: list[str] = []

    async def run() -> None:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=flood + 2)) as client:
            floods = [
                asyncio.ensure_future(_answered(client, url, "k-flood", finished)) for _ in range(flood)
            ]
            await _waiting_at_least(client, url, flood - 4)  # flood's requests queued behind the one place
            await _answered(client, url, "k-calm", finished)
            await asyncio.gather(*floods)

    asyncio.run(run())
    return finished.index("k-calm")


@pytest.mark.parametrize(("admission", "fair"), [("fair", True), ("fifo", False)])
def test_a_calm_tenant_is_not_queued_behind_a_flood(triton, model, admission: str, fair: bool) -> None:
    server, url = _gateway(triton.grpc_url, model["hf"], model["keys"], max_in_flight=1, fair=fair)
    try:
        before = _completion_order(url, 48)
    finally:
        server.should_exit = True
    if fair:
        assert before <= 5  # one request of the flood per turn, not the whole queue
    else:
        assert before >= 40  # first come, first served: behind the whole flood


def test_a_tenant_of_weight_3_gets_three_turns_to_another_tenants_one(triton, model) -> None:
    """Both tenants keep requests waiting for the one place: between the light tenant's (weight 1)
    first and last answers, the heavy one's (weight 3) are three to each of its; with weight 1 for
    both they would be one to one (test_a_calm_tenant_is_not_queued_behind_a_flood)."""
    server, url = _gateway(triton.grpc_url, model["hf"], model["keys"], max_in_flight=1)
    finished: list[str] = []

    async def run() -> None:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=60)) as client:
            heavy = [asyncio.ensure_future(_answered(client, url, "k-heavy", finished)) for _ in range(40)]
            await _waiting_at_least(client, url, 34)
            light = [asyncio.ensure_future(_answered(client, url, "k-light", finished)) for _ in range(8)]
            await asyncio.gather(*heavy, *light)

    try:
        asyncio.run(run())
    finally:
        server.should_exit = True
    first, last = finished.index("k-light"), len(finished) - 1 - finished[::-1].index("k-light")
    between = finished[first:last].count("k-heavy")
    assert 19 <= between <= 23, finished  # 7 turns of 3 between the light tenant's 8 answers
    assert finished[-1] == "k-heavy"  # the light tenant's 8 were never left to the end


def test_a_batch_in_one_request_takes_a_place_per_prompt(triton, model) -> None:
    """Six prompts in one request are six rows at Triton: with two places, the batch holds them all
    and another tenant's request waits its turn, where counting the batch as one request would
    have sent it in beside six rows (a flood in one request)."""
    server, url = _gateway(triton.grpc_url, model["hf"], model["keys"], max_in_flight=2)
    finished: list[str] = []

    async def run() -> None:
        async with httpx.AsyncClient(timeout=120) as client:

            async def post(key: str, prompt: str | list[str], max_tokens: int) -> None:
                body = {"model": BASE, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
                answer = await client.post(
                    url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                )
                assert answer.status_code == 200
                finished.append(key)

            async def until(sample: str) -> None:
                deadline = time.monotonic() + 60
                while sample not in (await client.get(url + "/metrics")).text:
                    assert time.monotonic() < deadline  # bounded poll

            batch = asyncio.ensure_future(post("k-flood", [PROMPT] * 6, 200))
            await until("ftprefix_in_flight_requests 6.0")  # its six rows are at Triton
            calm = asyncio.ensure_future(post("k-calm", PROMPT, 2))
            await until("ftprefix_waiting_requests 1.0")  # no place for it beside them
            await asyncio.gather(batch, calm)

    try:
        asyncio.run(run())
    finally:
        server.should_exit = True
    assert finished == ["k-flood", "k-calm"]


CALM_ROWS = [PROMPT] * 3


def _counted_before_calm(url: str, rows_before: int) -> bool:
    """Read as the calm request's answer comes: whether Triton had counted the first request's one
    row by then. Triton counts a request after its answer is sent, so the calm request's own three
    rows may not be counted yet: the first request's row is, if the rows counted since are 1 or 4
    (the calm request beside a first request still running: 0 or 3)."""
    return (rows_counted(url) - rows_before) in (1, 4)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_stream_whose_client_left_keeps_its_place_until_triton_finished_it(model, transport) -> None:
    """Neither FT nor the CPU twin can stop a generation it started: the place of a stream whose
    client left is given back when Triton's generation ends, not at the disconnect, so the next
    request (another tenant's) reaches Triton only then. Seen from Triton's own counts: when the
    next answer comes, the abandoned generation has finished too."""
    with EmbeddedServer(
        model["ft"], streaming=True, instances=2, watch_interval=None, stop_timeout=0
    ) as triton:
        http_url = triton.http_url if transport == "http" else None
        server, url = _gateway(
            triton.grpc_url, model["hf"], model["keys"], max_in_flight=1, triton_http_url=http_url
        )
        try:
            before = rows_counted(triton.grpc_url)
            body = {"model": BASE, "prompt": PROMPT, "max_tokens": 600, "ignore_eos": True, "stream": True}
            headers = {"Authorization": "Bearer k-flood"}
            with httpx.stream("POST", url + "/v1/completions", json=body, headers=headers, timeout=60) as s:
                next(s.iter_lines())  # the first event: Triton is generating; then the client leaves
            answer = _post(url, "k-calm", prompt=CALM_ROWS)
            assert answer.status_code == 200
            # the calm request was sent only once the abandoned one was done (with two engine
            # instances it would otherwise have run beside it, and finished first)
            assert _counted_before_calm(triton.grpc_url, before)
        finally:
            server.should_exit = True


@pytest.mark.parametrize(
    ("stream", "transport"), [(False, "grpc"), (True, "http")], ids=["whole-over-grpc", "streamed-over-http"]
)
def test_a_request_past_its_timeout_is_a_504_at_once_and_keeps_its_place_until_triton_finished_it(
    model, stream: bool, transport: str
) -> None:
    """The caller gets its 504 at --request-timeout, but Triton computes the generation to its end
    all the same: the request's place is given back only then, so a tenant whose requests outlive
    the timeout cannot pile generations onto Triton past --max-in-flight. Seen from Triton's own
    counts: at the 504 the generation is still running; when the next request's answer comes, it
    has finished too (with two engine instances the next one would otherwise have run beside it,
    and finished first)."""
    with EmbeddedServer(
        model["ft"], streaming=stream, instances=2, watch_interval=None, stop_timeout=0
    ) as triton:
        http_url = triton.http_url if transport == "http" else None
        server, url = _gateway(
            triton.grpc_url,
            model["hf"],
            model["keys"],
            max_in_flight=1,
            triton_http_url=http_url,
            timeout=0.5,
        )
        try:
            before, rows_before = requests_counted(triton.grpc_url), rows_counted(triton.grpc_url)
            body = {"model": BASE, "prompt": PROMPT, "max_tokens": 1500, "ignore_eos": True, "stream": stream}
            headers = {"Authorization": "Bearer k-flood"}
            answer = httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=60)
            if stream:  # its 200 is out: the stream ends with the 504's error event, then [DONE]
                assert answer.status_code == 200
                events = [line.removeprefix("data: ") for line in answer.text.splitlines() if line]
                assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "timeout"
                assert len(events) > 3  # it streamed text before its time was up
            else:
                assert answer.status_code == 504 and answer.json()["error"]["code"] == "timeout"
            assert requests_counted(triton.grpc_url) == before  # Triton is still generating it
            calm = _post(url, "k-calm", prompt=CALM_ROWS)
            assert calm.status_code == 200
            assert _counted_before_calm(triton.grpc_url, rows_before)
        finally:
            server.should_exit = True


@pytest.mark.parametrize("url", ["https://triton:8000", "triton", "triton:http"])
def test_a_bad_http_url_is_one_line_before_anything_listens(url: str, model, capsys) -> None:
    port = free_port()
    argv = ["openai", "--tokenizer", str(model["hf"]), "--port", str(port), "--http-url", url]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: --http-url:" in err and "host:port" in err


@pytest.mark.parametrize("url", ["http://127.0.0.1:8001", "triton", ""])
def test_a_bad_grpc_url_is_one_line_before_anything_listens(url: str, model, capsys) -> None:
    """Triton's HTTP URL for its gRPC one, the commonest slip: the gateway's start met it, and
    uvicorn printed the client's error as a traceback and exited 3."""
    port = free_port()
    argv = ["openai", "--tokenizer", str(model["hf"]), "--port", str(port), "--url", url]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: --url:" in err and "host:port" in err
