"""The CPU twin on a REAL Triton server: raw tritonclient.grpc requests with FT's inputs, answers
compared with Hugging Face given the original prefixes (tests/hf_reference.py).

One server for the whole module (each start costs seconds); the hot-reload test, which adds a task
to the served model, runs last.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hf_reference import HFReference
from serving_support import (
    HIDDEN,
    LAYERS,
    add_task,
    children_running,
    ft_inputs,
    make_converted,
    served_tasks,
    statistics_counting,
)
from tritonclient.utils import InferenceServerException

from ftprefix import protocol
from ftprefix.client import Client
from ftprefix.demo.toy import random_prefix
from ftprefix.serving.server import EmbeddedServer, free_port
from ftprefix.task_table import TaskTable

TASKS = {"smile": 3, "story": 5}
NAMES = list(TASKS)
OUT_LEN = 6
END_ID = 0  # the toy model's


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    _model, ft_dir, prefixes = make_converted(root, TASKS)
    return root, ft_dir, HFReference(root / "hf", prefixes)


@pytest.fixture(scope="module")
def server(converted):
    root, ft_dir, _ = converted
    with EmbeddedServer(ft_dir.parent, tokenizer_dir=root / "hf", watch_interval=0.2, stop_timeout=0) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


def ft_answer(rows: list[list[int]], generated: list[list[int]], out_len: int) -> tuple[list, list]:
    """FT's output_ids / sequence_length for rows asking the same length (docs/design.md)."""
    width = max(len(r) for r in rows)
    output_ids, lengths = [], []
    for row, new in zip(rows, generated, strict=True):
        output_ids.append((row + new + [END_ID] * (width + out_len))[: width + out_len])
        lengths.append(width + len(new))
    return output_ids, lengths


def check(result, rows, generated, out_len=OUT_LEN) -> None:
    output_ids, lengths = ft_answer(rows, generated, out_len)
    assert result.as_numpy(protocol.OUTPUT_IDS).dtype == np.uint32
    assert result.as_numpy(protocol.OUTPUT_IDS)[:, 0, :].tolist() == output_ids
    assert result.as_numpy(protocol.SEQUENCE_LENGTH)[:, 0].tolist() == lengths


PROMPTS = [[5, 17, 42, 8], [100, 3, 77], [9, 9, 250, 31, 12]]


def test_each_task_and_base_match_hugging_face(converted, client):
    hf = converted[2]
    prompt = PROMPTS[0]
    expected = {
        tid: hf.greedy(prompt, None if tid is None else NAMES[tid], OUT_LEN, END_ID)[0]
        for tid in (None, 0, 1)
    }
    assert len({tuple(v) for v in expected.values()}) == 3, "tasks must change the output for this test"
    for tid, want in expected.items():
        res = client.infer(protocol.FT_MODEL, ft_inputs([prompt], OUT_LEN, None if tid is None else [tid]))
        check(res, [prompt], [want])


def test_batch_mixing_tasks_in_rows(converted, client):
    hf = converted[2]
    task_ids = [1, 0, 1]
    want = [hf.greedy(p, NAMES[t], OUT_LEN, END_ID)[0] for p, t in zip(PROMPTS, task_ids, strict=True)]
    res = client.infer(protocol.FT_MODEL, ft_inputs(PROMPTS, OUT_LEN, task_ids))
    check(res, PROMPTS, want)


def test_task_table_and_end_id_published_in_model_config(client):
    for model in (protocol.FT_MODEL, protocol.ENSEMBLE_MODEL):
        cfg = client.get_model_config(model, as_json=True)["config"]
        table = TaskTable.from_json(cfg["parameters"][protocol.TASK_TABLE_PARAMETER]["string_value"])
        assert [(t.id, t.name, t.prompt_length) for t in table[:2]] == [(0, "smile", 3), (1, "story", 5)]
    cfg = client.get_model_config(protocol.FT_MODEL, as_json=True)["config"]
    assert cfg["parameters"][protocol.END_ID_PARAMETER]["string_value"] == str(END_ID)


def test_ensemble_text_in_generated_text_out(converted, client):
    root, _, hf = converted
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(root / "hf")
    text = "the cat sat on the mat"
    want = hf.greedy(tok.encode(text), "story", OUT_LEN, tok.eos_token_id)[0]
    arrays = [
        ("INPUT_0", np.array([[text]], dtype=object), "BYTES"),
        ("INPUT_1", np.array([[OUT_LEN]], dtype=np.uint32), "UINT32"),
        ("INPUT_2", np.array([[""]], dtype=object), "BYTES"),
        ("INPUT_3", np.array([[""]], dtype=object), "BYTES"),
        (protocol.TASK_IDS, np.array([[1]], dtype=np.uint32), "UINT32"),
    ]
    inputs = []
    for name, arr, dtype in arrays:
        inp = grpcclient.InferInput(name, list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    res = client.infer(protocol.ENSEMBLE_MODEL, inputs)
    assert res.as_numpy(protocol.TEXT_OUTPUT)[0, 0].decode("utf-8") == tok.decode(
        want, skip_special_tokens=True
    )


def test_concurrent_prompts_of_different_lengths_are_merged_and_answered_as_alone(converted, server):
    hf = converted[2]
    jobs = [([7 + i] * (1 + i % 5), NAMES[i % 2], 3 + i % 4) for i in range(16)]  # lengths 1..5, k 3..6
    results: dict[int, object] = {}

    def send(i: int) -> None:
        ids, task, out_len = jobs[i]
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            results[i] = c.infer(protocol.FT_MODEL, ft_inputs([ids], out_len, [NAMES.index(task)]))

    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        before = c.get_inference_statistics(protocol.FT_MODEL, as_json=True)["model_stats"][0]
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = statistics_counting(server.grpc_url, int(before.get("inference_count", 0)) + len(jobs))
    requests = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert requests == len(jobs) and executions < requests  # Triton merged prompts of different lengths
    for i, (ids, task, out_len) in enumerate(jobs):
        want = hf.greedy(ids, task, out_len, END_ID)[0]
        out = results[i].as_numpy(protocol.OUTPUT_IDS)[0, 0]
        # FT's layout: the row's tokens right after its own input (the batch may be wider), then
        # one more token when merged with a request asking for more
        assert out[len(ids) : len(ids) + out_len].tolist() == want


def test_the_batching_window_reaches_triton_and_holds_a_lone_request(converted):
    """`max_queue_delay_us` is Triton's window: it serves it back in the model config, and a request
    that no other joins waits the whole window before it runs (Triton's own queue statistics)."""
    window_us = 1_500_000
    with (
        EmbeddedServer(
            converted[1], watch_interval=None, max_queue_delay_us=window_us, stop_timeout=0, instances=1
        ) as srv,
        grpcclient.InferenceServerClient(srv.grpc_url) as c,
    ):
        served = c.get_model_config(protocol.FT_MODEL, as_json=True)["config"]
        assert int(served["dynamic_batching"]["max_queue_delay_microseconds"]) == window_us
        c.infer(protocol.FT_MODEL, ft_inputs([PROMPTS[0]], 2, [0]))
        stats = statistics_counting(srv.grpc_url, 1)
        assert int(stats["execution_count"]) == 1
        assert int(stats["inference_stats"]["queue"]["ns"]) >= window_us * 1000


@pytest.mark.parametrize(
    ("make_inputs", "message"),
    [
        (lambda: ft_inputs([PROMPTS[0]], OUT_LEN, [7]), "unknown task id 7"),
        (lambda: ft_inputs([PROMPTS[0]], 10_000, [0]), "exceeds the limit"),
    ],
    ids=["unknown-task", "too-long"],
)
def test_bad_requests_get_invalid_argument_and_server_keeps_serving(converted, client, make_inputs, message):
    with pytest.raises(InferenceServerException, match=message) as info:
        client.infer(protocol.FT_MODEL, make_inputs())
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    res = client.infer(protocol.FT_MODEL, ft_inputs([PROMPTS[1]], OUT_LEN, [0]))
    check(res, [PROMPTS[1]], [converted[2].greedy(PROMPTS[1], "smile", OUT_LEN, END_ID)[0]])


def test_wrong_dtype_is_rejected_by_triton(client):
    inputs = ft_inputs([PROMPTS[0]], OUT_LEN, [0])
    bad = grpcclient.InferInput(protocol.INPUT_IDS, [1, 4], "INT32")
    bad.set_data_from_numpy(np.array([PROMPTS[0]], dtype=np.int32))
    inputs[0] = bad
    with pytest.raises(InferenceServerException, match=r"(?i)data-type|datatype|data type"):
        client.infer(protocol.FT_MODEL, inputs)
    assert client.is_model_ready(protocol.FT_MODEL)


def test_an_engine_process_that_dies_is_started_again(converted, capsys):
    """Killed for memory, say. Triton neither starts it again nor calls the model unready, and
    sends every other request to it still: all of those failed, for good. Loading a model again
    replaces processes as well (the ensemble's, every step's), which is no death."""
    root, ft_dir, hf = converted
    prompt = PROMPTS[1]
    want = hf.greedy(prompt, "story", OUT_LEN, END_ID)[0]
    with (
        EmbeddedServer(
            ft_dir.parent, tokenizer_dir=root / "hf", watch_interval=None, stop_timeout=0, instances=2
        ) as srv,
        grpcclient.InferenceServerClient(srv.grpc_url) as c,
    ):

        def ask() -> None:
            check(c.infer(protocol.FT_MODEL, ft_inputs([prompt], OUT_LEN, [1])), [prompt], [want])

        def processes() -> list[int]:
            return sorted(children_running(srv.pid, b"/1/model.py"))

        for _ in range(4):
            ask()
        started = processes()
        assert len(started) == 4  # two engine instances, preprocessing, postprocessing
        srv.load_model("ensemble")  # Triton loads its steps again too: every process is new
        deadline = time.monotonic() + 60
        while set(processes()) & set(started) or len(processes()) != 4:  # the old ones end
            assert time.monotonic() < deadline
        assert srv.heal() == []
        assert "ended" not in capsys.readouterr().err

        engines = children_running(srv.pid, b"/fastertransformer/1/model.py")
        assert len(engines) == 2
        os.kill(engines[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        failed = answered = 0
        while answered < 8:  # in a row: with one instance dead, every other request fails
            assert time.monotonic() < deadline, f"{failed} requests failed"
            try:
                ask()
                answered += 1
            except InferenceServerException as exc:
                assert "not healthy" in str(exc) or "unavailable" in str(exc).lower(), exc
                failed, answered = failed + 1, 0
        said = capsys.readouterr().err
        assert "ended (killed for memory?)" in said and "loading 'fastertransformer' again" in said


def test_a_server_started_from_a_thread_that_ends_serves_on(converted):
    """The kernel sends a child its parent-death signal (PR_SET_PDEATHSIG) when the thread that
    started it ends, not its process: a server started on a pool's thread, or a request handler's,
    had its Triton stopped with that thread ("Server exiting" at the next request)."""
    _, ft_dir, hf = converted
    prompt = PROMPTS[2]
    want = hf.greedy(prompt, "story", OUT_LEN, END_ID)[0]
    server = EmbeddedServer(ft_dir.parent, watch_interval=None, stop_timeout=0, instances=1)
    starter = threading.Thread(target=server.start)
    starter.start()
    starter.join()
    try:
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            check(c.infer(protocol.FT_MODEL, ft_inputs([prompt], OUT_LEN, [1])), [prompt], [want])
        assert "Signal (" not in server.log_path.read_text(errors="replace")  # Triton's on SIGTERM
    finally:
        server.stop()


def test_a_stop_answers_the_request_in_flight_then_waits_for_no_unload(converted):
    """Stopped gracefully (Ctrl-C, SIGTERM), Triton answers the requests in flight, then unloads
    its models, and the python backend's unload of an instance sleeps a second first (server.py,
    DRAINED): 8.5 s to stop four instances. The request in flight is still answered in full, as
    Hugging Face answers it, and the stop now ends less than that second per instance after it."""
    _root, ft_dir, hf = converted
    instances, metrics = 3, free_port()
    answered: queue.Queue[tuple[float, object, object]] = queue.Queue()
    # Triton holds a lone request for its batching window: it is in flight when the stop begins
    server = EmbeddedServer(
        ft_dir.parent,
        watch_interval=None,
        instances=instances,
        threads=1,
        metrics_port=metrics,
        max_queue_delay_us=500_000,
    )
    with server, grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.async_infer(
            protocol.FT_MODEL,
            ft_inputs([PROMPTS[1]], OUT_LEN, [1]),
            callback=lambda result, error: answered.put((time.monotonic(), result, error)),
        )
        pending = f'nv_inference_pending_request_count{{model="{protocol.FT_MODEL}",version="1"}} 1'
        deadline = time.monotonic() + 30
        while pending not in httpx.get(f"http://127.0.0.1:{metrics}/metrics").text:
            assert time.monotonic() < deadline  # bounded poll: the request is at Triton
        server.stop()
        stopped = time.monotonic()
        at, result, error = answered.get(timeout=30)
    assert error is None
    check(result, [PROMPTS[1]], [hf.greedy(PROMPTS[1], "story", OUT_LEN, END_ID)[0]])
    assert stopped - at < instances * 1.0


def test_a_stop_lets_a_stream_in_flight_end(converted):
    """A stream's request counts as done at Triton from its start (the python backend, decoupled),
    so the line a stopping Triton writes once nothing is in flight comes at once: a stop that ended
    Triton there cut every stream in flight. The stream goes on to its last token, as Hugging Face
    generates it."""
    _root, ft_dir, hf = converted
    prompt, tokens = PROMPTS[2], 480  # within the toy model's 512 positions; about a second here
    expected, reason = hf.greedy(prompt, "story", tokens, END_ID)
    assert reason == "length"  # the stream outlasts the start of the stop
    server = EmbeddedServer(ft_dir.parent, streaming=True, watch_interval=None, instances=1, threads=1)
    stopping = threading.Thread(target=server.stop)
    got: list[int] = []
    with server, Client(server.grpc_url) as client:
        for chunk in client.stream(prompt, task="story", max_new_tokens=tokens, end_id=END_ID):
            got += chunk.token_ids
            if not stopping.is_alive() and len(got) == len(chunk.token_ids):  # after the first chunk
                stopping.start()
        stopping.join()
    assert got == expected


def test_a_stop_with_no_stream_in_flight_ends_triton_without_waiting_for_its_unload(converted, tmp_path):
    """Triton's own unload of a python model takes a second and more per instance (the python
    backend's health check sleeps a second), which a stop once waited for on a streaming model even
    with nothing in flight. The twin's streams lock tells the stop that nothing streams."""
    _root, ft_dir, hf = converted
    log = tmp_path / "triton.log"
    server = EmbeddedServer(ft_dir.parent, streaming=True, watch_interval=None, log_to=log)
    with server, Client(server.grpc_url) as client:
        got = [
            t
            for c in client.stream(PROMPTS[1], task="smile", max_new_tokens=4, end_id=END_ID)
            for t in c.token_ids
        ]
        assert got == hf.greedy(PROMPTS[1], "smile", 4, END_ID)[0]
    said = log.read_text(errors="replace")
    assert "have in-flight inferences" in said  # told to stop, Triton had said it was drained
    assert "successfully unloaded" not in said  # and was ended before its unload was done


def _python_envs() -> set[Path]:
    """The python backend's directories (python_backend `src/pb_env.cc` makes one in /tmp as Triton
    starts, and removes it only when Triton exits by itself, which a stop does not wait for)."""
    return set(Path("/tmp").glob("python_env_*"))


def test_servers_started_at_once_each_remove_the_directory_their_triton_made(converted):
    """Which directory a Triton made is known only by elimination: two started at once each saw
    two appear, knew neither, and left both. Started one at a time up to that point, each knows
    its own. (Another Triton starting beside them, as the suite's background runs start theirs,
    makes a third: then the test starts them again.)"""
    _root, ft_dir, _hf = converted
    for _ in range(5):
        before = _python_envs()
        servers = [
            EmbeddedServer(ft_dir.parent, watch_interval=None, instances=1, stop_timeout=0) for _ in "ab"
        ]
        both_started = threading.Barrier(len(servers))

        def start(server: EmbeddedServer, both_started: threading.Barrier) -> None:
            both_started.wait()
            server.start()

        threads = [threading.Thread(target=start, args=(s, both_started)) for s in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(s.running for s in servers)
        made = _python_envs() - before
        for server in servers:
            server.stop()
        if len(made) == len(servers):
            break
    else:
        pytest.fail("another Triton started beside every try: which directories are these is unknown")
    assert not [path for path in made if path.exists()]


def test_hot_reload_adds_task_without_restart(converted, server, client, capsys):
    _root, ft_dir, hf = converted
    pid = server.pid
    prefix = random_prefix(4, LAYERS, HIDDEN, seed=99).numpy()
    add_task(ft_dir, "fresh", prefix)

    deadline = time.monotonic() + 60
    names: list[str] = []
    said = ""
    while time.monotonic() < deadline:
        names = served_tasks(client)
        said += capsys.readouterr().out
        if "fresh" in names and client.is_model_ready(protocol.FT_MODEL) and "loaded again" in said:
            break
        time.sleep(0.2)  # bounded poll for the watcher; the assertions below are the check
    assert names == ["smile", "story", "fresh"]
    assert server.pid == pid and server.running
    # the operator is told what changed and which models (those holding the task table) loaded again
    (line,) = [line for line in said.splitlines() if "loaded again" in line]
    assert re.fullmatch(
        r"ftprefix serve: tasks: \+fresh \(3 in all\); fastertransformer, ensemble "
        r"loaded again in \d+\.\d s",
        line,
    ), line

    hf.prefixes["fresh"] = prefix
    res = client.infer(protocol.FT_MODEL, ft_inputs([PROMPTS[2]], OUT_LEN, [2]))
    check(res, [PROMPTS[2]], [hf.greedy(PROMPTS[2], "fresh", OUT_LEN, END_ID)[0]])


def test_a_model_directory_moved_away_is_said_once_served_then_said_back(converted, tmp_path, capsys):
    """The watcher looks at config.ini every watch interval, and said "reload failed" at each look:
    a model directory moved away for a minute wrote 120 lines. Now the failure is said once and
    tried again ever more rarely, the models loaded go on answering, and the return is said."""
    _root, ft_dir, hf = converted
    home, away = tmp_path / "model", tmp_path / "elsewhere"
    shutil.copytree(ft_dir.parent, home)
    server = EmbeddedServer(home, watch_interval=0.05, stop_timeout=0, instances=1)
    reloads: queue.Queue[None] = queue.Queue()
    looks: queue.Queue[None] = queue.Queue()
    reload, follow = server.reload, server._follow_config

    def counted_reload() -> str | None:
        try:
            return reload()
        finally:
            reloads.put(None)

    def counted_follow() -> None:
        follow()
        looks.put(None)

    server.reload, server._follow_config = counted_reload, counted_follow  # type: ignore[method-assign]
    expected = hf.greedy(PROMPTS[1], "story", OUT_LEN, END_ID)[0]
    with server, grpcclient.InferenceServerClient(server.grpc_url) as client:
        capsys.readouterr()
        home.rename(away)
        for _ in range(4):  # the failure, then three tries, 0.05, 0.1 and 0.2 s apart
            reloads.get(timeout=30)
        answer = client.infer(protocol.FT_MODEL, ft_inputs([PROMPTS[1]], OUT_LEN, [1]))
        check(answer, [PROMPTS[1]], [expected])
        said = capsys.readouterr()
        assert said.out == "" and said.err.count("\n") == 1
        assert said.err.startswith(
            f"ftprefix serve: reload failed, still serving what was loaded: {home / ft_dir.name} is not"
        )
        away.rename(home)
        back = f"ftprefix serve: {home / ft_dir.name} is back as it was loaded; nothing to reload\n"
        while back not in said.out:
            looks.get(timeout=30)
            said = capsys.readouterr()
        assert said.out == back and said.err == ""
