"""The CPU twin on a REAL Triton server: raw tritonclient.grpc requests with FT's inputs.

One server for the whole module (each start costs seconds); the hot-reload test, which adds a task
to the served model, runs last.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from serving_support import HIDDEN, LAYERS, add_task, ft_inputs, make_converted
from tritonclient.utils import InferenceServerException

from ftprefix import protocol
from ftprefix.demo.toy import random_prefix
from ftprefix.engine import Engine, GenerationRequest
from ftprefix.serving.server import EmbeddedServer
from ftprefix.task_table import TaskTable

TASKS = {"smile": 3, "story": 5}
OUT_LEN = 6


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    _model, model_dir, _prefixes = make_converted(root, TASKS)
    return root, model_dir


@pytest.fixture(scope="module")
def server(converted):
    root, model_dir = converted
    with EmbeddedServer(model_dir.parent, tokenizer_dir=root / "hf", watch_interval=0.2) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


def generated_rows(result, rows: list[list[int]]) -> list[list[int]]:
    """FT layout: padded input (width W) then generated tokens up to sequence_length."""
    out = result.as_numpy(protocol.OUTPUT_IDS)
    seq = result.as_numpy(protocol.SEQUENCE_LENGTH)
    width = max(len(r) for r in rows)
    return [out[b, 0, width : int(seq[b, 0])].tolist() for b in range(len(rows))]


def engine_greedy(model_dir, rows, task_ids, out_len=OUT_LEN) -> list[list[int]]:
    engine = Engine.load(model_dir)
    reqs = [
        GenerationRequest(input_ids=r, request_output_len=out_len, task_id=t)
        for r, t in zip(rows, task_ids, strict=True)
    ]
    return [res.generated_ids for res in engine.generate(reqs)]


PROMPTS = [[5, 17, 42, 8], [100, 3, 77], [9, 9, 250, 31, 12]]


def test_each_task_and_base_match_engine(converted, client):
    _root, model_dir = converted
    prompt = PROMPTS[0]
    expected = {}
    for tid in (None, 0, 1):
        expected[tid] = engine_greedy(model_dir, [prompt], [tid])[0]
    assert len({tuple(v) for v in expected.values()}) == 3, "tasks must change the output for this test"
    for tid, want in expected.items():
        res = client.infer(protocol.FT_MODEL, ft_inputs([prompt], OUT_LEN, None if tid is None else [tid]))
        assert generated_rows(res, [prompt]) == [want]
        assert res.as_numpy(protocol.OUTPUT_IDS).dtype == np.uint32
        assert res.as_numpy(protocol.OUTPUT_IDS).shape == (1, 1, len(prompt) + OUT_LEN)


def test_batch_mixing_tasks_in_rows(converted, client):
    _root, model_dir = converted
    task_ids = [1, 0, 1]
    want = engine_greedy(model_dir, PROMPTS, task_ids)
    res = client.infer(protocol.FT_MODEL, ft_inputs(PROMPTS, OUT_LEN, task_ids))
    assert generated_rows(res, PROMPTS) == want
    out = res.as_numpy(protocol.OUTPUT_IDS)
    # FT echoes each row's input (padded as sent) before the generated tokens
    assert out[1, 0, :3].tolist() == PROMPTS[1]


def test_task_table_published_in_model_config(client):
    for model in (protocol.FT_MODEL, protocol.ENSEMBLE_MODEL):
        cfg = client.get_model_config(model, as_json=True)["config"]
        table = TaskTable.from_json(cfg["parameters"][protocol.TASK_TABLE_PARAMETER]["string_value"])
        assert [(t.id, t.name, t.prompt_length) for t in table[:2]] == [(0, "smile", 3), (1, "story", 5)]


def test_ensemble_text_in_text_out(converted, client):
    root, model_dir = converted
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(root / "hf")
    text = "the cat sat on the mat"
    ids = tok.encode(text)
    want = engine_greedy(model_dir, [ids], [1])[0]
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
    got = res.as_numpy(protocol.TEXT_OUTPUT)[0, 0].decode("utf-8")
    assert got == tok.decode(ids + want, skip_special_tokens=True)


@pytest.mark.parametrize(
    ("make_inputs", "message"),
    [
        (lambda: ft_inputs([PROMPTS[0]], OUT_LEN, [7]), "unknown task id 7"),
        (lambda: ft_inputs([PROMPTS[0]], 10_000, [0]), "exceeds the limit"),
    ],
    ids=["unknown-task", "too-long"],
)
def test_bad_requests_get_clear_errors_and_server_keeps_serving(converted, client, make_inputs, message):
    with pytest.raises(InferenceServerException, match=message):
        client.infer(protocol.FT_MODEL, make_inputs())
    _root, model_dir = converted
    res = client.infer(protocol.FT_MODEL, ft_inputs([PROMPTS[1]], OUT_LEN, [0]))
    assert generated_rows(res, [PROMPTS[1]]) == engine_greedy(model_dir, [PROMPTS[1]], [0])


def test_wrong_dtype_is_rejected_by_triton(client):
    inputs = ft_inputs([PROMPTS[0]], OUT_LEN, [0])
    bad = grpcclient.InferInput(protocol.INPUT_IDS, [1, 4], "INT32")
    bad.set_data_from_numpy(np.array([PROMPTS[0]], dtype=np.int32))
    inputs[0] = bad
    with pytest.raises(InferenceServerException, match=r"(?i)data-type|datatype|data type"):
        client.infer(protocol.FT_MODEL, inputs)
    assert client.is_model_ready(protocol.FT_MODEL)


def test_hot_reload_adds_task_without_restart(converted, server, client):
    _root, model_dir = converted
    pid = server.pid
    prefix = random_prefix(4, LAYERS, HIDDEN, seed=99).numpy()
    add_task(model_dir, "fresh", prefix)

    deadline = time.monotonic() + 60
    names: list[str] = []
    while time.monotonic() < deadline:
        cfg = client.get_model_config(protocol.FT_MODEL, as_json=True)["config"]
        names = [
            t["name"] for t in json.loads(cfg["parameters"][protocol.TASK_TABLE_PARAMETER]["string_value"])
        ]
        if "fresh" in names and client.is_model_ready(protocol.FT_MODEL):
            break
        time.sleep(0.2)  # bounded poll for the watcher; the assertion below is the check
    assert names == ["smile", "story", "fresh"]
    assert server.pid == pid and server.running

    want = engine_greedy(model_dir, [PROMPTS[2]], [2])
    res = client.infer(protocol.FT_MODEL, ft_inputs([PROMPTS[2]], OUT_LEN, [2]))
    assert generated_rows(res, [PROMPTS[2]]) == want
