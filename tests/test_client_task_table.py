"""Task ids never move under a running server: after `ftprefix tasks remove`, a client holding the
old table (as every client of the GPU server does until it reads the table again) still reaches
each remaining task's own prefix with the ids it has, and a removed task's id reaches no prefix at
all. Only `ftprefix tasks compact` moves ids; then the server refuses ids that no longer name the
task the client meant (request parameter `prompt_learning_task_names`) and the client re-reads the
table and resends."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hf_reference import HFReference
from serving_support import ft_arrays, ft_inputs, requests_counted
from tritonclient.utils import InferenceServerException

from ftprefix import cli, protocol
from ftprefix.client import AsyncClient, Client, InvalidRequestError, UnknownTaskError
from ftprefix.client.http_infer import HttpInferPool
from ftprefix.client.http_stream import HttpStream
from ftprefix.demo import toy
from ftprefix.serving.server import EmbeddedServer
from ftprefix.task_table import TaskTable

TASKS = {"taskA": 2, "taskB": 3, "taskC": 4}
PROMPT = [5, 17, 42, 99, 7]


def _served_names(url: str) -> list[str]:
    with grpcclient.InferenceServerClient(url) as raw:
        config = raw.get_model_config(protocol.FT_MODEL, as_json=True)["config"]
    table = config["parameters"][protocol.TASK_TABLE_PARAMETER]["string_value"]
    return TaskTable.from_json(table).names


def _convert(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A toy model with TASKS, converted with `ftprefix convert` into tmp_path/ft; and the prefixes."""
    hf_dir, out = tmp_path / "hf", tmp_path / "ft"
    toy.build_model(hf_dir, hidden_size=32, num_heads=4, with_tokenizer=False)
    argv = ["convert", "--model", str(hf_dir), "--tp", "1", "--dtype", "fp32", "--out", str(out)]
    prefixes = {}
    for seed, (name, length) in enumerate(TASKS.items(), start=1):
        prefixes[name] = toy.random_prefix(length, 2, 32, seed=seed).numpy()
        np.save(tmp_path / f"{name}.npy", prefixes[name])
        argv += ["--prefix", f"{name}={tmp_path / name}.npy"]
    assert cli.main(argv) == 0
    return out, prefixes


def _raw_tokens(url: str, task_id: int) -> list[int]:
    """A GPU client's request: the id alone, no task names."""
    with grpcclient.InferenceServerClient(url) as raw:
        result = raw.infer(protocol.FT_MODEL, ft_inputs([PROMPT], 6, [task_id]))
    return result.as_numpy(protocol.OUTPUT_IDS)[0, 0, len(PROMPT) : len(PROMPT) + 6].tolist()


def _wait_for_table(url: str, names: list[str]) -> None:
    deadline = time.monotonic() + 60
    while _served_names(url) != names and time.monotonic() < deadline:
        time.sleep(0.2)  # bounded poll for the server's reload; asserted next
    assert _served_names(url) == names


def test_old_ids_keep_their_task_and_a_removed_id_reaches_no_prefix(tmp_path: Path) -> None:
    out, prefixes = _convert(tmp_path)
    prefixes["taskD"] = toy.random_prefix(3, 2, 32, seed=9).numpy()
    np.save(tmp_path / "taskD.npy", prefixes["taskD"])
    hf = HFReference(tmp_path / "hf", prefixes)
    want = {name: hf.greedy(PROMPT, name, 6, end_id=0)[0] for name in prefixes}  # the toy's end_id
    assert len({tuple(w) for w in want.values()}) == len(want)  # otherwise a swap could not show

    loop = asyncio.new_event_loop()  # one loop for the async client's whole life
    # one engine instance: each change of the table loads the model again, every instance anew
    with EmbeddedServer(out, stop_timeout=0, instances=1) as server:
        sync_client = Client(server.grpc_url, task_table_ttl=None)
        async_client = AsyncClient(server.grpc_url, task_table_ttl=None)
        assert [t.name for t in sync_client.tasks()] == list(TASKS)
        assert [t.name for t in loop.run_until_complete(async_client.tasks())] == list(TASKS)

        assert cli.main(["tasks", "remove", str(out), "taskA"]) == 0  # id 0 retired; B, C keep 1, 2
        _wait_for_table(server.grpc_url, ["taskB", "taskC"])
        # raw requests with the ids read before the remove, as a GPU client sends them
        assert _raw_tokens(server.grpc_url, 1) == want["taskB"]
        assert _raw_tokens(server.grpc_url, 2) == want["taskC"]
        with pytest.raises(grpcclient.InferenceServerException, match="taskA") as refused:
            _raw_tokens(server.grpc_url, 0)  # the removed task's id: no task's prefix answers it
        assert "StatusCode.INVALID_ARGUMENT" in str(refused.value.status())

        # clients still holding the old table: their ids still mean their tasks
        assert sync_client.generate(PROMPT, task="taskC", max_new_tokens=6).token_ids == want["taskC"]
        assert sync_client.generate(PROMPT, task="taskB", max_new_tokens=6).token_ids == want["taskB"]
        with pytest.raises(UnknownTaskError):  # refused by the server, then gone from the new table
            sync_client.generate(PROMPT, task="taskA", max_new_tokens=6)

        async def stale_async() -> list[int]:
            with pytest.raises(UnknownTaskError):
                await async_client.generate(PROMPT, task="taskA", max_new_tokens=6)
            return (await async_client.generate(PROMPT, task="taskC", max_new_tokens=6)).token_ids

        assert loop.run_until_complete(stale_async()) == want["taskC"]

        # a new task gets a new id, never the retired one
        assert cli.main(["tasks", "add", str(out), "--prefix", f"taskD={tmp_path / 'taskD.npy'}"]) == 0
        _wait_for_table(server.grpc_url, ["taskB", "taskC", "taskD"])
        assert sync_client.model_info(refresh=True).tasks.find("taskD").id == 3
        assert _raw_tokens(server.grpc_url, 3) == want["taskD"]
        assert _raw_tokens(server.grpc_url, 2) == want["taskC"]
        loop.run_until_complete(async_client.close())
        sync_client.close()
    loop.close()


def test_server_refuses_ids_that_name_another_task_and_keeps_serving(tmp_path: Path) -> None:
    out, _ = _convert(tmp_path)

    with (
        EmbeddedServer(out, watch_interval=None, stop_timeout=0) as server,
        grpcclient.InferenceServerClient(server.grpc_url) as raw,
    ):
        wrong = {protocol.TASK_NAMES_PARAMETER: json.dumps(["taskC"])}
        with pytest.raises(grpcclient.InferenceServerException, match="task table changed"):
            raw.infer(protocol.FT_MODEL, ft_inputs([PROMPT], 4, [1]), parameters=wrong)
        right = {protocol.TASK_NAMES_PARAMETER: json.dumps(["taskB"])}
        ok = raw.infer(protocol.FT_MODEL, ft_inputs([PROMPT], 4, [1]), parameters=right)
        assert ok.as_numpy(protocol.OUTPUT_IDS).shape[:2] == (1, 1)

        # the same parameter reaches the model over Triton's HTTP endpoint (AsyncClient(http_url=...))
        async def over_http(parameters: dict[str, str]) -> dict[str, np.ndarray]:
            pool = HttpInferPool(server.http_url)
            try:
                inputs = ft_arrays([PROMPT], 4, [1])
                return await pool.infer(protocol.FT_MODEL, inputs, [protocol.OUTPUT_IDS], parameters, 60)
            finally:
                await pool.close()

        with pytest.raises(InferenceServerException, match="task table changed") as refused:
            asyncio.run(over_http(wrong))
        assert refused.value.status() == "INVALID_ARGUMENT"
        assert asyncio.run(over_http(right))[protocol.OUTPUT_IDS].shape[:2] == (1, 1)

        # and through generate_stream, where streams go over HTTP
        async def streamed(parameters: dict[str, str]) -> list[dict[str, np.ndarray]]:
            pool = HttpInferPool(server.http_url)
            stream = HttpStream(
                pool, protocol.FT_MODEL, ft_arrays([PROMPT], 4, [1]), [protocol.OUTPUT_IDS], parameters, 60
            )
            try:
                return [outputs async for outputs in _responses(stream)]
            finally:
                stream.close()
                await pool.close()

        with pytest.raises(InferenceServerException, match="task table changed") as refused:
            asyncio.run(streamed(wrong))
        assert refused.value.status() == "INVALID_ARGUMENT"
        (answer,) = asyncio.run(streamed(right))
        assert answer[protocol.OUTPUT_IDS].shape[:2] == (1, 1)


async def _responses(stream: HttpStream) -> AsyncIterator[dict[str, np.ndarray]]:
    while (outputs := await stream.next()) is not None:
        yield outputs


def test_on_a_streaming_server_stale_ids_are_resent_and_a_refusal_is_the_same_error(tmp_path: Path) -> None:
    # a gRPC stream's error carries no status: the server marks its refusals in the message
    out, prefixes = _convert(tmp_path)
    want = HFReference(tmp_path / "hf", prefixes).greedy(PROMPT, "taskC", 6, end_id=0)[0]
    loop = asyncio.new_event_loop()
    with EmbeddedServer(out, stop_timeout=0, instances=1, streaming=True) as server:
        sync_client = Client(server.grpc_url, task_table_ttl=None)
        async_client = AsyncClient(server.grpc_url, task_table_ttl=None)  # streams over gRPC
        assert [t.name for t in sync_client.tasks()] == list(TASKS)
        assert [t.name for t in loop.run_until_complete(async_client.tasks())] == list(TASKS)
        assert cli.main(["tasks", "remove", str(out), "taskB"]) == 0
        assert cli.main(["tasks", "compact", str(out), "--force"]) == 0  # taskC: id 2 -> 1
        _wait_for_table(server.grpc_url, ["taskA", "taskC"])

        # both clients hold the old table (taskC at 2): refused, the table read again, resent
        chunks = sync_client.stream(PROMPT, task="taskC", max_new_tokens=6)
        assert [token for chunk in chunks for token in chunk.token_ids] == want

        async def streamed() -> list[int]:
            chunks = async_client.stream(PROMPT, task="taskC", max_new_tokens=6)
            return [token async for chunk in chunks for token in chunk.token_ids]

        assert loop.run_until_complete(streamed()) == want
        assert sync_client.generate(PROMPT, task="taskC", max_new_tokens=6).token_ids == want

        # a request the server refuses is an invalid request, as it is from a server that does not stream
        with pytest.raises(InvalidRequestError, match="exceeds the limit") as refused:
            sync_client.generate(PROMPT, task="taskC", max_new_tokens=5000)
        assert refused.value.status == "StatusCode.INVALID_ARGUMENT"
        assert protocol.REFUSED_ON_STREAM not in str(refused.value)

        async def refused_over_http() -> InvalidRequestError:  # the status as HTTP names it
            async with AsyncClient(server.grpc_url, http_url=server.http_url) as over_http:
                with pytest.raises(InvalidRequestError, match="exceeds the limit") as refused:
                    await over_http.generate(PROMPT, task="taskC", max_new_tokens=5000)
            return refused.value

        assert loop.run_until_complete(refused_over_http()).status == "INVALID_ARGUMENT"
        loop.run_until_complete(async_client.close())
        sync_client.close()
    loop.close()


def test_the_client_waits_for_a_server_that_publishes_its_new_table_late(tmp_path: Path) -> None:
    out, prefixes = _convert(tmp_path)
    want = HFReference(tmp_path / "hf", prefixes).greedy(PROMPT, "taskC", 6, end_id=0)[0]
    with (
        EmbeddedServer(out, watch_interval=None, stop_timeout=0, instances=1) as server,
        Client(server.grpc_url, task_table_ttl=None) as client,
    ):
        assert [t.name for t in client.tasks()] == list(TASKS)
        assert cli.main(["tasks", "remove", str(out), "taskB"]) == 0
        compact = ["tasks", "compact", str(out), "--url", server.grpc_url]
        before = (out / "1-gpu" / "config.ini").read_bytes()
        assert cli.main(compact) == 2  # refused: the server is up and its clients hold the ids
        assert (out / "1-gpu" / "config.ini").read_bytes() == before
        assert cli.main([*compact, "--force"]) == 0  # the one id move: taskC 2 -> 1
        # the model reloads with the new ids, but the table it publishes is still the old one
        server.load_model(protocol.FT_MODEL)
        before = requests_counted(server.grpc_url)

        def publish_after_the_refusal() -> None:
            deadline = time.monotonic() + 60
            while requests_counted(server.grpc_url) == before and time.monotonic() < deadline:
                time.sleep(0.05)  # poll the server's statistics for the refused request
            server.reload()  # now publish the new table

        publisher = threading.Thread(target=publish_after_the_refusal)
        publisher.start()
        try:
            got = client.generate(PROMPT, task="taskC", max_new_tokens=6).token_ids
        finally:
            publisher.join()
        assert got == want  # refused with the old ids, resent once the new table was published
