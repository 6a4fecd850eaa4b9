"""The client against a real `ftprefix serve` (Triton on CPU): answers equal Hugging Face's.

Expected tokens come from Hugging Face GPTNeoXForCausalLM with each task's original prefix as
past_key_values (tests/hf_reference.py), texts from the Hugging Face tokenizer: neither goes
through the client, the server or ftprefix's engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import trustme
from hf_reference import HFReference
from serving_support import rows_counted
from transformers import AutoTokenizer
from tritonclient.utils import InferenceServerException

from ftprefix import cli, layout, protocol
from ftprefix.client import (
    AsyncClient,
    Client,
    InvalidRequestError,
    RequestTimeoutError,
    ServerUnavailableError,
    StreamingNotSupportedError,
    UnknownTaskError,
)
from ftprefix.client.base import ClientBase
from ftprefix.demo import toy
from ftprefix.serving.server import EmbeddedServer

LAYERS, HIDDEN = 2, 64
TASKS = {"taskA": 3, "taskB": 5, "taskC": 1, "taskD": 4}  # name -> prefix length
PROMPTS = ["The quick brown fox", "Hello world! How", "One base model serves", "the cat"]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("client_model")
    hf_dir, out = root / "hf", root / "ft"
    toy.build_model(hf_dir)
    argv = ["convert", "--model", str(hf_dir), "--tp", "2", "--dtype", "fp32", "--out", str(out)]
    prefixes = {}
    for seed, (name, length) in enumerate(TASKS.items(), start=1):
        path = root / f"{name}.pt"
        prefixes[name] = toy.random_prefix(length, LAYERS, HIDDEN, seed=seed)
        torch.save(prefixes[name], path)
        argv += ["--prefix", f"{name}={path}"]
    assert cli.main(argv) == 0
    return {"hf": hf_dir, "ft": out, "prefixes": {k: v.numpy() for k, v in prefixes.items()}}


@pytest.fixture(scope="module")
def reference(model: dict):
    """greedy(prompt, task, **words) -> (generated ids, text, finish reason), computed by Hugging Face."""
    hf = HFReference(model["hf"], model["prefixes"])
    tokenizer = AutoTokenizer.from_pretrained(str(model["hf"]))

    def greedy(prompt: str, task: str | None, new_tokens: int = NEW_TOKENS, stop_words=()):
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        tokens, reason = hf.greedy(ids, task, new_tokens, tokenizer.eos_token_id, stop_words)
        return tokens, tokenizer.decode(tokens, skip_special_tokens=True), reason

    greedy.tokenizer = tokenizer  # type: ignore[attr-defined]
    return greedy


@pytest.fixture(scope="module")
def server(model: dict):
    with EmbeddedServer(model["ft"], tokenizer_dir=model["hf"], stop_timeout=0) as srv:
        yield srv


@pytest.fixture(scope="module")
def streaming_server(model: dict):
    with EmbeddedServer(model["ft"], streaming=True, stop_timeout=0) as srv:
        yield srv


@pytest.fixture()
def client(server: EmbeddedServer, model: dict):
    with Client(server.grpc_url, tokenizer=model["hf"]) as c:
        yield c


def _counted(replicas: list[str], before: list[int], answered: int) -> list[int]:
    """Each replica's inferences since `before`, once they add up to the `answered` requests:
    Triton counts a request after its answer is on its way, so the last one answered may not be
    counted yet when its answer is read (then [43, 0] read for 44)."""
    deadline = time.monotonic() + 10
    while True:
        counts = [rows_counted(url) - b for url, b in zip(replicas, before, strict=True)]
        if sum(counts) >= answered or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)  # bounded poll; the counts are asserted by the caller


def test_a_target_naming_several_replicas_spreads_requests_over_all_of_them(
    server: EmbeddedServer, model: dict, reference
) -> None:
    """Kubernetes' headless Service (`dns:///triton-pods:8001`) names every replica: requests go
    round robin over them, as Triton's own counts show, where one connection would take them all
    to one replica."""
    with EmbeddedServer(model["ft"], tokenizer_dir=model["hf"], stop_timeout=0, instances=1) as second:
        replicas = (server.grpc_url, second.grpc_url)
        target = f"ipv4:{','.join(replicas)}"
        jobs = [(PROMPTS[i % len(PROMPTS)], [None, *TASKS][i % (len(TASKS) + 1)]) for i in range(8)]
        before = [rows_counted(url) for url in replicas]
        with Client(target, tokenizer=model["hf"]) as c:
            answers = [c.generate(p, task=t, max_new_tokens=NEW_TOKENS) for p, t in jobs]

        async def run_all() -> list:
            async with AsyncClient(target, tokenizer=model["hf"]) as c:
                return [await c.generate(p, task=t, max_new_tokens=NEW_TOKENS) for p, t in jobs]

        answers += asyncio.run(run_all())
        served = _counted(list(replicas), before, len(answers))
    for (prompt, task), completion in zip(jobs * 2, answers, strict=True):
        assert (completion.token_ids, completion.text) == reference(prompt, task)[:2]
    assert sum(served) == 16 and min(served) >= 4  # round robin: about 8 each


def test_tasks_are_read_from_the_server(client: Client, model: dict) -> None:
    table = layout.read_config(layout.find_ft_dir(model["ft"])).tasks
    assert [(t.id, t.name, t.prompt_length) for t in client.tasks()] == [
        (i, t.name, t.prompt_length) for i, t in enumerate(table)
    ]


@pytest.mark.parametrize("task", [None, *TASKS])
def test_each_task_equals_engine_greedy(client: Client, reference, task: str | None) -> None:
    ids, text, reason = reference(PROMPTS[0], task)
    completion = client.generate(PROMPTS[0], task=task, max_new_tokens=NEW_TOKENS)
    assert completion.token_ids == ids
    assert completion.text == text
    assert completion.finish_reason == reason
    assert completion.task == task


def test_tasks_give_different_answers(client: Client) -> None:
    # guards the test above: the prefixes must matter, or a client ignoring the task would pass
    answers = {tuple(client.generate(PROMPTS[1], task=t, max_new_tokens=NEW_TOKENS).token_ids) for t in TASKS}
    assert len(answers) == len(TASKS)


def test_mixed_task_batch(client: Client, reference) -> None:
    tasks = ["taskB", None, "taskA", "taskD", "taskC", "taskA"]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(tasks))]
    completions = client.generate_batch(prompts, tasks=tasks, max_new_tokens=NEW_TOKENS)
    for prompt, task, completion in zip(prompts, tasks, completions, strict=True):
        ids, text, _ = reference(prompt, task)
        assert (completion.task, completion.token_ids, completion.text) == (task, ids, text)


@pytest.mark.parametrize("through", ["fastertransformer", "ensemble"])
def test_a_seed_per_prompt_samples_each_row_as_a_lone_request_with_that_seed(
    client: Client, server: EmbeddedServer, through: str
) -> None:
    """Rows of one call that share a seed share FT's random numbers; a seed per prompt gives each
    row its own, in order, across the requests the rows are split into (base rows and task rows),
    through the fastertransformer model and through the text ensemble alike."""
    tasks = ["taskA", None, "taskA", None]
    sampling = {"max_new_tokens": NEW_TOKENS, "temperature": 2.0, "top_k": 50}
    with contextlib.ExitStack() as stack:
        c = client if through == "fastertransformer" else stack.enter_context(Client(server.grpc_url))
        seeds = [3, 4, 5, 6]
        batch = c.generate_batch([PROMPTS[1]] * 4, tasks=tasks, seed=seeds, **sampling)
        alone = [
            c.generate(PROMPTS[1], task=t, seed=n, **sampling) for t, n in zip(tasks, seeds, strict=True)
        ]
        shared = c.generate_batch([PROMPTS[1]] * 2, tasks="taskA", seed=3, **sampling)
    assert [b.text for b in batch] == [a.text for a in alone]
    assert batch[0].text != batch[2].text and batch[1].text != batch[3].text  # the seeds matter
    assert [s.text for s in shared] == [batch[0].text] * 2


def test_token_ids_in_without_tokenizer(server: EmbeddedServer, reference) -> None:
    ids, _, _ = reference(PROMPTS[2], "taskC")
    prompt_ids = reference.tokenizer.encode(PROMPTS[2], add_special_tokens=False)
    with Client(server.grpc_url) as c:
        completion = c.generate(prompt_ids, task="taskC", max_new_tokens=NEW_TOKENS)
    assert completion.token_ids == ids
    assert completion.text is None


def test_text_through_the_server_ensemble(server: EmbeddedServer, reference) -> None:
    _, text, _ = reference(PROMPTS[3], "taskB")
    with Client(server.grpc_url) as c:  # no tokenizer: the ensemble tokenises on the server
        completion = c.generate(PROMPTS[3], task="taskB", max_new_tokens=NEW_TOKENS)
    assert completion.text == text


def test_a_model_and_tokenizer_under_names_that_are_not_ascii_are_served(model: dict, reference, tmp_path):
    """Triton's python backend runs Python with an ASCII file system encoding whatever the locale,
    and hands it the model's path as UTF-8 text: a model under /home/田中/ was not found there.
    Served from such a place, the model answers as Hugging Face does, through the ensemble too."""
    home = tmp_path / "田中 é"
    shutil.copytree(model["ft"], home / "ft")
    shutil.copytree(model["hf"], home / "hf")
    server = EmbeddedServer(home / "ft", tokenizer_dir=home / "hf", stop_timeout=0, instances=1)
    with server, Client(server.grpc_url) as c:
        for prompt, task in ((PROMPTS[0], None), (PROMPTS[3], "taskB")):
            ids, text, _ = reference(prompt, task)
            completion = c.generate(prompt, task=task, max_new_tokens=NEW_TOKENS)
            prompt_ids = reference.tokenizer.encode(prompt, add_special_tokens=False)
            assert c.generate(prompt_ids, task=task, max_new_tokens=NEW_TOKENS).token_ids == ids
            assert completion.text == text


def test_stop_string_ends_generation(client: Client, reference) -> None:
    ids, _, _ = reference(PROMPTS[0], "taskA")
    tok = reference.tokenizer
    # a greedy token past the first whose text tokenises back to itself and is new at that point
    k = next(
        k
        for k in range(1, len(ids) - 1)
        if ids[k] not in ids[:k] and tok.encode(tok.decode([ids[k]]), add_special_tokens=False) == [ids[k]]
    )
    stop_text = tok.decode([ids[k]])
    expected_ids, expected_text, reason = reference(PROMPTS[0], "taskA", stop_words=[[ids[k]]])
    assert reason == "stop_words" and expected_ids == ids[: k + 1]
    for stop in ([stop_text], [[ids[k]]]):
        completion = client.generate(PROMPTS[0], task="taskA", max_new_tokens=NEW_TOKENS, stop=stop)
        assert completion.token_ids == expected_ids
        assert completion.finish_reason == "stop_words"
    assert completion.text == expected_text  # token-id stop: nothing to strip from the text
    completion = client.generate(PROMPTS[0], task="taskA", max_new_tokens=NEW_TOKENS, stop=[stop_text])
    assert completion.text + stop_text == expected_text


def test_unknown_task_fails_before_any_request(client: Client, server: EmbeddedServer) -> None:
    client.tasks()  # table cached; the check below must not send an inference request
    before = rows_counted(server.grpc_url)
    with pytest.raises(UnknownTaskError, match="'taskA', 'taskB', 'taskC', 'taskD'") as info:
        client.generate_batch(PROMPTS[:2], tasks=["taskA", "nope"])
    assert info.value.task == "nope"
    assert rows_counted(server.grpc_url) == before
    client.generate(PROMPTS[0], task="taskA", max_new_tokens=1)
    assert _counted([server.grpc_url], [before], 1) == [1]  # the counter does count requests


def test_stream_needs_a_decoupled_model(client: Client) -> None:
    with pytest.raises(StreamingNotSupportedError, match="not decoupled"):
        next(iter(client.stream(PROMPTS[0], task="taskA")))


def test_timeout_is_reported(server: EmbeddedServer, model: dict) -> None:
    with Client(server.grpc_url, tokenizer=model["hf"], timeout=0.001) as c:
        c.tasks()
        with pytest.raises(RequestTimeoutError, match=r"did not answer within 0\.001 s"):
            c.generate(PROMPTS[0], task="taskA", max_new_tokens=200)


@pytest.mark.parametrize("timeout", [None, float("inf"), 1e10])
def test_a_timeout_of_forever_waits_for_the_answer(
    server: EmbeddedServer, streaming_server: EmbeddedServer, model: dict, reference, timeout: float | None
) -> None:
    """None, inf and a wait too long for gRPC's clock all wait as long as it takes. 1e10 s and inf
    were DEADLINE_EXCEEDED at once (gRPC counts a deadline in int64 nanoseconds since 1970), and a
    stream's wait for its next token past threading.TIMEOUT_MAX raised OverflowError."""
    ids, text, reason = reference(PROMPTS[0], "taskB")
    with Client(server.grpc_url, tokenizer=model["hf"], timeout=timeout) as c:
        completion = c.generate(PROMPTS[0], task="taskB", max_new_tokens=NEW_TOKENS)
    assert (completion.token_ids, completion.text, completion.finish_reason) == (ids, text, reason)
    with Client(streaming_server.grpc_url, tokenizer=model["hf"], timeout=timeout) as c:
        chunks = list(c.stream(PROMPTS[0], task="taskB", max_new_tokens=NEW_TOKENS))
    assert [t for chunk in chunks for t in chunk.token_ids] == ids


def test_a_check_left_unanswered_says_what_it_asked_and_for_how_long(
    server: EmbeddedServer, monkeypatch
) -> None:
    """Triton stopped (SIGSTOP) after the clients connected: their own checks go unanswered. Those
    were said as a request's timeout ("did not answer within 60 s; pass a larger timeout or ask for
    fewer new tokens"), naming a time that had not passed (a check's limit is its own) and remedies
    that do not help a server that answers nothing."""
    monkeypatch.setattr(ClientBase, "probe_timeout", 0.5)
    said = (
        f"the server at {server.grpc_url} did not answer {{}} within 0.5 s, which a working server "
        "answers at once: it is stopped, hung or overloaded"
    )

    async def ask_async(c: AsyncClient) -> None:
        await c.model_info(refresh=True)

    with Client(server.grpc_url, task_table_ttl=None) as sync_client:
        async_client = AsyncClient(server.grpc_url, task_table_ttl=None)
        loop = asyncio.new_event_loop()
        try:
            sync_client.tasks()  # both connected
            loop.run_until_complete(async_client.tasks())
            os.kill(server.pid, signal.SIGSTOP)
            try:
                # stopped once every thread is: the kill only asks (a thread on a virtual CPU the
                # host has not run yet answered a check after it); its parent, this process, is told
                _, status = os.waitpid(server.pid, os.WUNTRACED)
                assert os.WIFSTOPPED(status)
                with pytest.raises(RequestTimeoutError) as sync_error:
                    sync_client.model_info(refresh=True)
                with pytest.raises(RequestTimeoutError) as async_error:
                    loop.run_until_complete(ask_async(async_client))
            finally:
                os.kill(server.pid, signal.SIGCONT)
            loop.run_until_complete(async_client.close())
        finally:
            loop.close()
    asked = f"whether {protocol.FT_MODEL!r} is ready"
    assert (str(sync_error.value), str(async_error.value)) == (said.format(asked), said.format(asked))
    assert sync_error.value.status == async_error.value.status == "StatusCode.DEADLINE_EXCEEDED"


_TLS_CLIENTS = """
import asyncio, json, sys
from ftprefix.client import AsyncClient, Client
url, hf, prompt = sys.argv[1:4]
with Client(url, tokenizer=hf, connect_retries=0) as c:
    plain = c.generate(prompt, task="taskB", max_new_tokens=8).token_ids
async def main():
    async with AsyncClient(url, tokenizer=hf, connect_retries=0) as c:
        return (await c.generate(prompt, task="taskB", max_new_tokens=8)).token_ids
print(json.dumps([plain, asyncio.run(main())]))
"""


def test_a_grpcs_url_speaks_tls_and_checks_the_server_certificate(
    model: dict, reference, tmp_path, monkeypatch
) -> None:
    """`grpcs://` was taken and its TLS dropped: the client spoke plain gRPC to a TLS endpoint (an
    ingress, a Triton started with --grpc-use-ssl) and got only "unavailable". A real Triton with
    TLS on its gRPC port here, its certificate from a private CA that the clients trust through
    gRPC's own GRPC_DEFAULT_SSL_ROOTS_FILE_PATH, and without which they refuse the server."""
    from ftprefix.serving import tritonserver

    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    key, chain, roots = tmp_path / "server.key", tmp_path / "server.crt", tmp_path / "ca.pem"
    issued.private_key_pem.write_to_path(str(key))
    issued.cert_chain_pems[0].write_to_path(str(chain))
    ca.cert_pem.write_to_path(str(roots))
    command = tritonserver.command

    def with_tls(*args: Any, **kwargs: Any) -> list[str]:
        tls = ["--grpc-use-ssl=true", f"--grpc-server-cert={chain}", f"--grpc-server-key={key}"]
        return [*command(*args, **kwargs), *tls]

    monkeypatch.setattr(tritonserver, "command", with_tls)
    expected, _, _ = reference(PROMPTS[0], "taskB")
    with EmbeddedServer(model["ft"], stop_timeout=0, instances=1) as srv:
        url = f"grpcs://localhost:{srv.grpc_port}"

        def clients(roots_file: Path | None) -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in os.environ.items() if k != "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"}
            env |= {"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(roots_file)} if roots_file else {}
            argv = [sys.executable, "-c", _TLS_CLIENTS, url, str(model["hf"]), PROMPTS[0]]
            return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)

        trusted = clients(roots)
        assert trusted.returncode == 0, trusted.stderr
        assert json.loads(trusted.stdout) == [expected, expected]
        untrusted = clients(None)
        assert untrusted.returncode == 1 and "ServerUnavailableError" in untrusted.stderr


def test_unreachable_server_names_url_and_how_to_start_one(server: EmbeddedServer) -> None:
    from ftprefix.serving.server import free_port

    url = f"127.0.0.1:{free_port()}"
    with Client(url, connect_retries=1, retry_delay=0.01) as c, pytest.raises(ServerUnavailableError) as info:
        c.tasks()
    assert (
        url in str(info.value)
        and "ftprefix serve" in str(info.value)
        and "docker compose up" in str(info.value)
    )


def test_a_command_pointed_at_an_http_port_says_so_and_which_port_to_give(
    server: EmbeddedServer, capsys
) -> None:
    """Triton's HTTP port where its gRPC port belongs, the usual mistake: gRPC's own error names
    neither (Triton's HTTP server closes the connection), so the command looks what answers there."""
    from ftprefix.cli import main
    from ftprefix.serving.server import free_port

    http = server.http_url.removeprefix("http://")
    assert main(["tasks", "list", "--url", http]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"ftprefix tasks: error: {http} answers HTTP/1.1, not gRPC: it is an HTTP port (Triton's HTTP "
        "endpoint, 8000 by default, or the OpenAI API); pass Triton's gRPC port (8001 by default) as --url\n"
    )
    closed = f"127.0.0.1:{free_port()}"  # nothing there: the usual message
    assert main(["tasks", "list", "--url", closed]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no Triton server reachable at {closed}" in err


def test_cli_generate(server: EmbeddedServer, model: dict, reference, capsys) -> None:
    _, text, _ = reference(PROMPTS[1], "taskD")
    argv = ["generate", "--url", server.grpc_url, "--task", "taskD", "--tokenizer", str(model["hf"])]
    assert cli.main([*argv, "--max-new-tokens", str(NEW_TOKENS), PROMPTS[1]]) == 0
    assert capsys.readouterr().out == text + "\n"
    assert cli.main([*argv, "--json", "--max-new-tokens", str(NEW_TOKENS), PROMPTS[1]]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == text


def test_cli_unknown_task_is_one_line_exit_2(server: EmbeddedServer, capsys) -> None:
    assert cli.main(["generate", "--url", server.grpc_url, "--task", "nope", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ftprefix generate: error: unknown task 'nope'")


def test_cli_generate_says_its_own_options(server: EmbeddedServer, model: dict, capsys) -> None:
    """The client's checks speak of its parameters (`max_new_tokens`, `generate()`); what the
    command prints names the command's options."""
    url = ["generate", "--url", server.grpc_url]
    tokenizer = ["--tokenizer", str(model["hf"])]
    for argv, said in (
        (
            [*tokenizer, "--max-new-tokens", "0", "hi"],
            "--max-new-tokens must be within [1, 2**31), got 0",
        ),
        (
            [*tokenizer, "--temperature", "0", "hi"],
            "--temperature must be > 0, got 0.0 (for greedy use --top-k 0, --top-p 0)",
        ),
        (
            [*tokenizer, "--timeout", "0", "hi"],
            "--timeout must be more than 0 seconds (inf: wait as long as it takes), got 0.0",
        ),
        (
            [*tokenizer, "--timeout", "nan", "hi"],
            "--timeout must be more than 0 seconds (inf: wait as long as it takes), got nan",
        ),
        (
            ["--stream", "hi"],
            "--stream needs --tokenizer HF_DIR (or --token-ids): a stream comes from the "
            "fastertransformer model, which takes and gives token ids",
        ),
        (
            [*tokenizer, "--stream", "hi"],
            f"--stream: the server at {server.grpc_url} answers once per request; leave out --stream, "
            "or serve the model with `ftprefix serve --streaming` (`triton-repo --streaming` on GPUs)",
        ),
    ):
        assert cli.main([*url, *argv]) == 2
        assert capsys.readouterr().err == f"ftprefix generate: error: {said}\n"


# -- streaming server -------------------------------------------------------------------------


def test_stream_yields_the_generate_tokens(streaming_server: EmbeddedServer, model, reference) -> None:
    ids, text, reason = reference(PROMPTS[0], "taskB")
    with Client(streaming_server.grpc_url, tokenizer=model["hf"]) as c:
        chunks = list(c.stream(PROMPTS[0], task="taskB", max_new_tokens=NEW_TOKENS))
        completion = c.generate(PROMPTS[0], task="taskB", max_new_tokens=NEW_TOKENS)
    assert len(chunks) >= 2  # really streamed, not one answer at the end
    assert [t for chunk in chunks for t in chunk.token_ids] == completion.token_ids == ids
    assert "".join(chunk.text or "" for chunk in chunks) == completion.text == text
    assert chunks[-1].finish_reason == reason and all(ch.finish_reason is None for ch in chunks[:-1])


def test_streams_leave_no_thread_behind(streaming_server: EmbeddedServer, model: dict) -> None:
    """Read to the end, left after the first chunk, or timed out, a stream ends every thread it
    started. Each one left a thread waiting for more requests for the rest of the process
    (tritonclient's stream, stopped with cancel_requests=True, never ends its request queue): a
    service streaming all day would have gathered a thread per stream."""
    before = set(threading.enumerate())
    with Client(streaming_server.grpc_url, tokenizer=model["hf"]) as c:
        for _ in range(3):
            assert list(c.stream(PROMPTS[0], task="taskB", max_new_tokens=NEW_TOKENS))
        for _chunk in c.stream(PROMPTS[1], task="taskA", max_new_tokens=NEW_TOKENS):
            break
    with (
        Client(streaming_server.grpc_url, tokenizer=model["hf"], timeout=0.001) as c,
        pytest.raises(RequestTimeoutError),
    ):
        list(c.stream(PROMPTS[0], task="taskB", max_new_tokens=200))
    started = [t for t in threading.enumerate() if t not in before]
    for thread in started:
        thread.join(timeout=10)
    assert [t.name for t in started if t.is_alive()] == []


def test_mixed_batch_on_streaming_server(streaming_server: EmbeddedServer, model, reference) -> None:
    tasks = ["taskC", None, "taskA"]
    with Client(streaming_server.grpc_url, tokenizer=model["hf"]) as c:
        completions = c.generate_batch(PROMPTS[:3], tasks=tasks, max_new_tokens=NEW_TOKENS)
    assert [c.token_ids for c in completions] == [
        reference(p, t)[0] for p, t in zip(PROMPTS[:3], tasks, strict=True)
    ]


def test_async_stream(streaming_server: EmbeddedServer, model, reference) -> None:
    ids, _, _ = reference(PROMPTS[2], "taskD")

    async def collect() -> list[int]:
        async with AsyncClient(streaming_server.grpc_url, tokenizer=model["hf"]) as c:
            return [
                t
                async for chunk in c.stream(PROMPTS[2], task="taskD", max_new_tokens=NEW_TOKENS)
                for t in chunk.token_ids
            ]

    assert asyncio.run(collect()) == ids


# -- async client under load ------------------------------------------------------------------


@pytest.mark.parametrize("which", ["server", "streaming_server"])
def test_async_32_concurrent_requests_over_4_tasks(which: str, request, model, reference) -> None:
    srv = request.getfixturevalue(which)
    jobs = [(PROMPTS[i % len(PROMPTS)], list(TASKS)[(i // len(PROMPTS)) % len(TASKS)]) for i in range(32)]
    expected = {(p, t): reference(p, t)[:2] for p, t in set(jobs)}

    async def run_all():
        async with AsyncClient(srv.grpc_url, tokenizer=model["hf"]) as c:
            return await asyncio.gather(*(c.generate(p, task=t, max_new_tokens=NEW_TOKENS) for p, t in jobs))

    completions = asyncio.run(run_all())
    assert len(completions) == 32
    for (prompt, task), completion in zip(jobs, completions, strict=True):
        assert completion.task == task
        assert (completion.token_ids, completion.text) == expected[(prompt, task)]


def test_streaming_server_has_no_text_ensemble_and_says_how_to_send_text(model: dict, capsys) -> None:
    # Triton cannot build the ensemble on a decoupled model: refused with one line, nothing started,
    # before any port is looked at (with the default HTTP port taken, that was the line it said)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        argv = ["serve", str(model["ft"]), "--streaming", "--tokenizer", str(model["hf"])]
        assert cli.main([*argv, "--http-port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tokenize in the client" in err


def test_cli_tasks_list_from_server(server: EmbeddedServer, capsys) -> None:
    assert cli.main(["tasks", "list", "--url", server.grpc_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[:-1] if line.split() and line.split()[0].isdigit()]
    assert [(int(r[0]), r[1], int(r[2])) for r in rows] == [
        (i, n, p) for i, (n, p) in enumerate(TASKS.items())
    ]
    assert lines[-1] == f"4 task(s) served at {server.grpc_url}"


def test_cli_generate_stream(streaming_server: EmbeddedServer, model, reference, capsys) -> None:
    _, text, _ = reference(PROMPTS[3], "taskC")
    argv = [
        "generate",
        "--url",
        streaming_server.grpc_url,
        "--task",
        "taskC",
        "--tokenizer",
        str(model["hf"]),
    ]
    assert cli.main([*argv, "--stream", "--max-new-tokens", str(NEW_TOKENS), PROMPTS[3]]) == 0
    assert capsys.readouterr().out == text + "\n"
    forever = [*argv, "--stream", "--timeout", "inf", "--max-new-tokens", str(NEW_TOKENS), PROMPTS[3]]
    assert cli.main(forever) == 0  # it timed out at once
    assert capsys.readouterr().out == text + "\n"
    # several prompts, a task each: one after another, each on its line, as a batch prints them
    _, other, _ = reference(PROMPTS[0], "taskA")
    several = [*argv, "--task", "taskA", "--stream"]  # taskC for the first prompt, taskA the second
    assert cli.main([*several, "--max-new-tokens", str(NEW_TOKENS), PROMPTS[3], PROMPTS[0]]) == 0
    assert capsys.readouterr().out == f"{text}\n{other}\n"
    assert cli.main([*several, "--json", "--max-new-tokens", str(NEW_TOKENS), PROMPTS[3], PROMPTS[0]]) == 0
    chunks = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    texts = ["".join(c["text"] for c in chunks if c["index"] == i) for i in (0, 1)]
    assert texts == [text, other]
    assert [c["index"] for c in chunks if c["finish_reason"]] == [0, 1]


def test_a_request_the_server_refuses_is_an_invalid_request_error(client: Client) -> None:
    with pytest.raises(InvalidRequestError, match="exceeds the limit") as info:
        client.generate(PROMPTS[0], task="taskA", max_new_tokens=5000)
    assert info.value.status == "StatusCode.INVALID_ARGUMENT"
    assert isinstance(info.value.__cause__, InferenceServerException)
    assert client.generate(PROMPTS[0], task="taskA", max_new_tokens=2).finish_reason == "length"


# -- whole answers over Triton's HTTP endpoint (AsyncClient(http_url=...)) ---------------------


def test_async_http_path_equals_hugging_face_and_is_the_path_taken(
    server: EmbeddedServer, model, reference
) -> None:
    jobs = [(PROMPTS[i % len(PROMPTS)], [None, *TASKS][i % (len(TASKS) + 1)]) for i in range(20)]
    expected = {(p, t): reference(p, t)[:2] for p, t in set(jobs)}

    async def run_all(http_url: str) -> list:
        async with AsyncClient(server.grpc_url, http_url=http_url, tokenizer=model["hf"]) as c:
            batch = await c.generate_batch(
                [p for p, _ in jobs[:6]], tasks=[t for _, t in jobs[:6]], max_new_tokens=NEW_TOKENS
            )
            singles = await asyncio.gather(
                *(c.generate(p, task=t, max_new_tokens=NEW_TOKENS) for p, t in jobs)
            )
            return [*batch, *singles]

    completions = asyncio.run(run_all(server.http_url))
    for (prompt, task), completion in zip([*jobs[:6], *jobs], completions, strict=True):
        assert (completion.task, completion.token_ids, completion.text) == (task, *expected[(prompt, task)])

    from ftprefix.serving.server import free_port

    nowhere = f"127.0.0.1:{free_port()}"  # gRPC still answers: a failure here is the HTTP path's
    with pytest.raises(ServerUnavailableError) as info:
        asyncio.run(run_all(nowhere))
    assert nowhere in str(info.value) and info.value.status == "UNAVAILABLE"
    assert str(info.value).endswith("pass the right --http-url")


def test_async_http_failures_are_the_errors_grpc_gives(server: EmbeddedServer, model) -> None:
    async def run() -> None:
        async with AsyncClient(server.grpc_url, http_url=server.http_url, tokenizer=model["hf"]) as c:
            with pytest.raises(InvalidRequestError, match="exceeds the limit") as refused:
                await c.generate(PROMPTS[0], task="taskA", max_new_tokens=5000)
            assert refused.value.status == "INVALID_ARGUMENT"
            assert isinstance(refused.value.__cause__, InferenceServerException)
            # the connection the refusal came on is kept and answers the next request
            assert (await c.generate(PROMPTS[0], task="taskA", max_new_tokens=2)).finish_reason == "length"
        async with AsyncClient(
            server.grpc_url, http_url=server.http_url, tokenizer=model["hf"], timeout=0.001
        ) as c:
            await c.tasks()
            with pytest.raises(RequestTimeoutError, match=r"did not answer within 0\.001 s"):
                await c.generate(PROMPTS[0], task="taskA", max_new_tokens=200)

    asyncio.run(run())


@pytest.mark.parametrize(
    "url", ["https://localhost:8000", "localhost", "localhost:http", "localhost:70000", "localhost:8000/v2"]
)
def test_a_bad_http_url_is_refused_when_the_client_is_made(url: str) -> None:
    from ftprefix.client import FtprefixClientError

    with pytest.raises(FtprefixClientError, match="host:port"):
        AsyncClient("localhost:8001", http_url=url)


# -- streams over Triton's HTTP endpoint (generate_stream) ------------------------------------


def test_async_http_streams_equal_hugging_face_and_are_the_path_taken(
    streaming_server: EmbeddedServer, model, reference
) -> None:
    jobs = [(PROMPTS[i % len(PROMPTS)], [None, *TASKS][i % (len(TASKS) + 1)]) for i in range(12)]
    ids, _, _ = reference(PROMPTS[0], "taskA")
    stop = [[ids[2]]]  # a stop word FT ends the row at: sent as stop_words_list [1, 2, L]
    expected = {(p, t, ()): reference(p, t) for p, t in set(jobs)}
    expected[(PROMPTS[0], "taskA", (ids[2],))] = reference(PROMPTS[0], "taskA", stop_words=stop)
    jobs_with_stops = [(p, t, ()) for p, t in jobs] + [(PROMPTS[0], "taskA", (ids[2],))]

    async def run_all(http_url: str) -> list:
        async with AsyncClient(streaming_server.grpc_url, http_url=http_url, tokenizer=model["hf"]) as c:

            async def one(prompt: str, task: str | None, stop_ids: tuple[int, ...]) -> list:
                words = {"stop": [list(stop_ids)]} if stop_ids else {}
                stream = c.stream(prompt, task=task, max_new_tokens=NEW_TOKENS, **words)
                return [chunk async for chunk in stream]

            concurrent = await asyncio.gather(*(one(*job) for job in jobs_with_stops))
            one_after_another = [await one(*job) for job in jobs_with_stops[:3]]
            return [*concurrent, *one_after_another]

    chunk_lists = asyncio.run(run_all(streaming_server.http_url))
    for job, chunks in zip([*jobs_with_stops, *jobs_with_stops[:3]], chunk_lists, strict=True):
        want_ids, want_text, want_reason = expected[job]
        assert len(chunks) >= 2, job  # really streamed, not one answer at the end
        assert [t for chunk in chunks for t in chunk.token_ids] == want_ids, job
        assert "".join(chunk.text or "" for chunk in chunks) == want_text, job
        assert chunks[-1].finish_reason == want_reason and all(ch.finish_reason is None for ch in chunks[:-1])
    assert expected[(PROMPTS[0], "taskA", (ids[2],))][2] == "stop_words"

    from ftprefix.serving.server import free_port

    nowhere = f"127.0.0.1:{free_port()}"  # gRPC still answers: a failure here is the HTTP path's
    with pytest.raises(ServerUnavailableError) as info:
        asyncio.run(run_all(nowhere))
    assert nowhere in str(info.value) and str(info.value).endswith("pass the right --http-url")


def test_async_http_stream_failures_are_the_errors_grpc_gives(
    streaming_server: EmbeddedServer, model
) -> None:
    async def run() -> None:
        async with AsyncClient(
            streaming_server.grpc_url, http_url=streaming_server.http_url, tokenizer=model["hf"]
        ) as c:
            with pytest.raises(InvalidRequestError, match="exceeds the limit") as refused:
                async for _ in c.stream(PROMPTS[0], task="taskA", max_new_tokens=5000):
                    pass
            assert refused.value.status == "INVALID_ARGUMENT"
            assert isinstance(refused.value.__cause__, InferenceServerException)
            chunks = [chunk async for chunk in c.stream(PROMPTS[0], task="taskA", max_new_tokens=2)]
            assert chunks[-1].finish_reason == "length"
        async with AsyncClient(
            streaming_server.grpc_url, http_url=streaming_server.http_url, tokenizer=model["hf"], timeout=0.05
        ) as c:
            await c.tasks()
            with pytest.raises(RequestTimeoutError, match=r"did not answer within 0\.05 s"):
                async for _ in c.stream(PROMPTS[0], task="taskA", max_new_tokens=1000, min_new_tokens=1000):
                    pass

    asyncio.run(run())


@pytest.mark.parametrize(
    ("version", "over_http"),
    [
        ("2.51.0", True),
        ("2.60.1", True),
        ("3.0.0", True),
        ("2.50.0", False),
        ("2.34.0", False),  # the GPU image's Triton 23.05: no generate endpoint
        ("dev", False),
    ],
)
def test_streams_take_http_only_from_servers_they_were_checked_with(version: str, over_http: bool) -> None:
    from ftprefix.client.http_stream import streams_over_http

    assert streams_over_http(version) is over_http


@pytest.fixture(scope="module")
def pods(model: dict):
    """Two replicas on one port at two loopback addresses, as Triton pods are, and a DNS server
    answering for their name; of these tests' own, since the module's server may still be
    computing what an earlier test gave up waiting for, which Triton counts when it ends."""
    from dns_support import name_server

    with EmbeddedServer(model["ft"], stop_timeout=0, instances=1) as first:
        _, port = first.grpc_url.rsplit(":", 1)
        with (
            EmbeddedServer(
                model["ft"], host="127.0.0.2", grpc_port=int(port), stop_timeout=0, instances=1
            ) as second,
            name_server("triton-pods.test", ["127.0.0.1"]) as dns,
        ):
            yield dns, (first.grpc_url, second.grpc_url)


@contextlib.contextmanager
def _asking(kind: str, target: str, model: dict, resolve_every: float | None) -> Iterator[Callable[[], Any]]:
    """A client of `kind` for `target`: one blocking call that generates once with it."""
    if kind == "sync":
        with Client(target, tokenizer=model["hf"], resolve_every=resolve_every) as c:
            yield lambda: c.generate(PROMPTS[0], max_new_tokens=NEW_TOKENS)
        return
    loop = asyncio.new_event_loop()  # one loop for the client's whole life: its channels live on it
    a = AsyncClient(target, tokenizer=model["hf"], resolve_every=resolve_every)
    try:
        yield lambda: loop.run_until_complete(a.generate(PROMPTS[0], max_new_tokens=NEW_TOKENS))
    finally:
        loop.run_until_complete(a.close())
        loop.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("resolve_every", [None, 0.0], ids=["never", "every-call"])
def test_replicas_added_behind_a_dns_name_get_requests_once_the_client_looks_it_up_again(
    pods, model: dict, reference, resolve_every: float | None, kind: str
) -> None:
    """Scaling up the Triton pods: the headless Service's name answers one more address. gRPC
    looks a name up again only when a connection fails, so a client that never opens a new channel
    sends everything to the replicas it first saw; Client and AsyncClient open one every
    `resolve_every` seconds (30 by default; here at every call), and the new replica gets
    requests. The name is resolved by gRPC's own resolver, asking a DNS server of the test's."""
    dns, replicas = pods
    dns.addresses = ["127.0.0.1"]  # one replica behind the name
    _, port = replicas[0].rsplit(":", 1)
    before = [rows_counted(url) for url in replicas]
    questions = dns.questions
    with _asking(kind, dns.target(int(port)), model, resolve_every) as ask:
        answers = [ask() for _ in range(4)]
        alone = _counted(replicas, before, len(answers))
        dns.addresses = ["127.0.0.1", "127.0.0.2"]  # scaled up
        # the new replica's connection is opened by the first channel that sees it, and round
        # robin picks only replicas already connected: ask until it has served some
        for _ in range(40):
            answers.append(ask())
            if resolve_every is not None and rows_counted(replicas[1]) > before[1] + 2:
                break
        after = _counted(replicas, before, len(answers))
    assert all((a.token_ids, a.text) == reference(PROMPTS[0], None)[:2] for a in answers)
    assert alone == [4, 0]
    if resolve_every is None:
        assert after == [44, 0]  # never looked up again: the new replica idles
    else:
        assert after[1] >= 3 and dns.questions > questions + 1


def test_a_stream_goes_on_on_the_channel_a_new_lookup_retired(
    streaming_server: EmbeddedServer, model, reference
) -> None:
    """A call that opens a new channel (here every call does) leaves the calls of the old one to
    finish there: a stream in flight meanwhile ends whole, and closing the client ends the rest."""
    from dns_support import name_server

    ids, _, _ = reference(PROMPTS[2], "taskD")
    host, port = streaming_server.grpc_url.rsplit(":", 1)

    async def collect(target: str) -> tuple[list[int], int]:
        async with AsyncClient(target, tokenizer=model["hf"], resolve_every=0.0) as c:
            tokens, chunks_after = [], 0
            async for chunk in c.stream(PROMPTS[2], task="taskD", max_new_tokens=NEW_TOKENS):
                if tokens:
                    chunks_after += 1  # a chunk that came after the stream's channel was retired
                tokens += chunk.token_ids
                await c.tasks(refresh=True)  # a call on a new channel, while the stream runs
        return tokens, chunks_after

    with name_server("triton.test", [host]) as dns:
        tokens, chunks_after = asyncio.run(collect(dns.target(int(port))))
    assert tokens == ids
    assert chunks_after >= 2
