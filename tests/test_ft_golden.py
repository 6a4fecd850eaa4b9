"""Held to real FasterTransformer: every scenario recorded on an H100 (tests/data/ft-golden).

`ftprefix serve` must answer raw tritonclient requests (FT's tensor names, as a user of the GPU
server sends them) byte for byte as FT did, streamed or not; `Client`, `AsyncClient` and `stream`
must give FT's generated tokens trimmed to the requested length. Nothing expected is computed here.
"""

from __future__ import annotations

import asyncio
import queue
from collections import defaultdict

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from golden import MODELS, Scenario, convert, scenarios

from ftprefix import protocol
from ftprefix.client import AsyncClient, Client
from ftprefix.serving.server import EmbeddedServer


@pytest.fixture(scope="module", params=list(MODELS))
def converted(request, tmp_path_factory):
    return request.param, convert(request.param, tmp_path_factory.mktemp(request.param) / "ft")


@pytest.fixture(scope="module")
def server(converted):
    with EmbeddedServer(converted[1], watch_interval=None, stop_timeout=0) as srv:
        yield srv


@pytest.fixture(scope="module")
def pooled_server(converted):
    """One instance with a pool of 4 threads: the engine's sums split across threads."""
    with EmbeddedServer(converted[1], instances=1, threads=4, watch_interval=None, stop_timeout=0) as srv:
        yield srv


@pytest.fixture(scope="module")
def streaming_server(converted):
    # one single-threaded instance, as each of the default layout's: the stream is the subject
    with EmbeddedServer(
        converted[1], streaming=True, instances=1, watch_interval=None, stop_timeout=0
    ) as srv:
        yield srv


def _check(scenario: Scenario, output_ids: np.ndarray, sequence_length: np.ndarray, want: dict) -> None:
    assert output_ids.dtype == np.uint32 and sequence_length.dtype == np.uint32
    assert output_ids.shape == (len(scenario.rows), 1, len(want["output_ids"][0]))
    assert output_ids[:, 0, :].tolist() == want["output_ids"], scenario.name
    assert sequence_length[:, 0].tolist() == want["sequence_length"], scenario.name


@pytest.mark.parametrize("layout", ["default", "pooled"])
def test_every_scenario_equals_ft(converted, layout, request) -> None:
    """With the default layout (single-threaded instances) and with a pool of threads: the
    threads must not change a token."""
    server = request.getfixturevalue("server" if layout == "default" else "pooled_server")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for scenario in scenarios(converted[0]):
            result = client.infer(protocol.FT_MODEL, scenario.inputs())
            want = {
                "output_ids": scenario.raw["ft_output_ids"],
                "sequence_length": scenario.raw["ft_sequence_length"],
            }
            _check(
                scenario,
                result.as_numpy(protocol.OUTPUT_IDS),
                result.as_numpy(protocol.SEQUENCE_LENGTH),
                want,
            )


def _stream(url: str, scenario: Scenario) -> list[grpcclient.InferResult]:
    responses: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(url) as client:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        client.async_stream_infer(protocol.FT_MODEL, scenario.inputs(), enable_empty_final_response=True)
        got = []
        while True:
            result, error = responses.get(timeout=60)
            assert error is None, error
            if result.as_numpy(protocol.OUTPUT_IDS) is not None:
                got.append(result)
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
        client.stop_stream()
    return got


def test_every_scenario_streams_as_ft_streams(converted, streaming_server) -> None:
    for scenario in scenarios(converted[0]):
        got = _stream(streaming_server.grpc_url, scenario)
        want = [
            *scenario.raw["ft_stream"],
            {
                "output_ids": scenario.raw["ft_output_ids"],
                "sequence_length": scenario.raw["ft_sequence_length"],
            },
        ]
        assert len(got) == len(want), scenario.name
        for result, expected in zip(got, want, strict=True):
            _check(
                scenario,
                result.as_numpy(protocol.OUTPUT_IDS),
                result.as_numpy(protocol.SEQUENCE_LENGTH),
                expected,
            )


def test_a_bad_streamed_request_gets_one_final_invalid_argument_error(converted, streaming_server) -> None:
    scenario = scenarios(converted[0])[0]
    inputs = [i for i in scenario.inputs() if i.name() != protocol.TASK_IDS]
    bad = grpcclient.InferInput(protocol.TASK_IDS, [len(scenario.rows), 1], "UINT32")
    bad.set_data_from_numpy(np.full((len(scenario.rows), 1), 5, dtype=np.uint32))
    responses: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(streaming_server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        client.async_stream_infer(protocol.FT_MODEL, [*inputs, bad])
        result, error = responses.get(timeout=60)
        client.stop_stream()
    assert result is None and "unknown task id 5" in str(error)
    assert responses.empty()


# -- the same scenarios through the client ---------------------------------------------------------


def _options(scenario: Scenario, max_new_tokens: int) -> dict:
    s = scenario.raw
    options = {"max_new_tokens": max_new_tokens, "top_k": 1, "end_id": s["end_id"]}
    options["repetition_penalty"] = s["repetition_penalty"]
    if s["stop_words"]:
        options["stop"] = [s["stop_words"]]
    if s["bad_words"]:
        options["bad_words"] = [s["bad_words"]]
    return options


def test_client_gives_fts_tokens_trimmed_to_the_request(converted, server) -> None:
    with Client(server.grpc_url) as client:
        for scenario in scenarios(converted[0]):
            by_length = defaultdict(list)
            for b, row in enumerate(scenario.rows):
                by_length[row["request_output_len"]].append(b)
            for k, rows in by_length.items():
                completions = client.generate_batch(
                    [scenario.rows[b]["ids"] for b in rows],
                    tasks=[scenario.task(b) for b in rows],
                    **_options(scenario, k),
                )
                assert [c.token_ids for c in completions] == [scenario.expected(b) for b in rows], (
                    scenario.name
                )


def test_async_client_concurrent_rows_give_fts_tokens(converted, server) -> None:
    async def run() -> list[tuple[Scenario, int, list[int]]]:
        async with AsyncClient(server.grpc_url) as client:
            jobs = [(s, b) for s in scenarios(converted[0]) for b in range(len(s.rows))]
            completions = await asyncio.gather(
                *(
                    client.generate(
                        s.rows[b]["ids"], task=s.task(b), **_options(s, s.rows[b]["request_output_len"])
                    )
                    for s, b in jobs
                )
            )
            return [(s, b, c.token_ids) for (s, b), c in zip(jobs, completions, strict=True)]

    for scenario, b, tokens in asyncio.run(run()):
        assert tokens == scenario.expected(b), (scenario.name, b)


def test_stream_gives_fts_tokens_chunk_by_chunk(converted, streaming_server) -> None:
    with Client(streaming_server.grpc_url) as client:
        for scenario in scenarios(converted[0]):
            for b, row in enumerate(scenario.rows):
                chunks = list(
                    client.stream(
                        row["ids"], task=scenario.task(b), **_options(scenario, row["request_output_len"])
                    )
                )
                assert [t for c in chunks for t in c.token_ids] == scenario.expected(b), (scenario.name, b)
                assert chunks[-1].finish_reason is not None and all(
                    c.finish_reason is None for c in chunks[:-1]
                )


def test_streams_over_http_give_fts_tokens_chunk_by_chunk(converted, streaming_server) -> None:
    """Every row through Triton's generate_stream (AsyncClient with http_url), all rows at once."""

    async def run() -> list[tuple[Scenario, int, list]]:
        async with AsyncClient(streaming_server.grpc_url, http_url=streaming_server.http_url) as client:

            async def one(s: Scenario, b: int) -> list:
                row = s.rows[b]
                options = _options(s, row["request_output_len"])
                return [chunk async for chunk in client.stream(row["ids"], task=s.task(b), **options)]

            jobs = [(s, b) for s in scenarios(converted[0]) for b in range(len(s.rows))]
            chunk_lists = await asyncio.gather(*(one(s, b) for s, b in jobs))
            return [(s, b, chunks) for (s, b), chunks in zip(jobs, chunk_lists, strict=True)]

    for scenario, b, chunks in asyncio.run(run()):
        assert [t for c in chunks for t in c.token_ids] == scenario.expected(b), (scenario.name, b)
        assert chunks[-1].finish_reason is not None and all(c.finish_reason is None for c in chunks[:-1])
