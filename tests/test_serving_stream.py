"""Streaming (decoupled `fastertransformer`) on a real Triton server, as the FT backend streams."""

from __future__ import annotations

import queue

import pytest
import tritonclient.grpc as grpcclient
from serving_support import ft_inputs, make_converted

from ftprefix import protocol
from ftprefix.engine import Engine, GenerationRequest
from ftprefix.serving.server import EmbeddedServer

OUT_LEN = 5


@pytest.fixture(scope="module")
def streaming_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    _model, model_dir, _ = make_converted(root, {"smile": 3}, seed=1)
    with EmbeddedServer(model_dir, streaming=True, watch_interval=None) as srv:
        yield srv, model_dir


def _collect(url, inputs):
    responses: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(url) as client:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        client.async_stream_infer(protocol.FT_MODEL, inputs, request_id="r1")
        got = []
        while True:
            result, error = responses.get(timeout=60)
            got.append((result, error))
            params = result.get_response().parameters if result is not None else {}
            if error is not None or params["triton_final_response"].bool_param:
                break
        client.stop_stream()
    return got


def test_stream_sends_full_output_ids_each_step_then_final(streaming_server):
    srv, model_dir = streaming_server
    rows, task_ids = [[5, 17, 42, 8], [100, 3]], [0, 0]
    engine = Engine.load(model_dir)
    want = [
        r.generated_ids
        for r in engine.generate(
            [
                GenerationRequest(input_ids=r, request_output_len=OUT_LEN, task_id=t)
                for r, t in zip(rows, task_ids, strict=True)
            ]
        )
    ]
    got = _collect(srv.grpc_url, ft_inputs(rows, OUT_LEN, task_ids))
    assert all(err is None for _, err in got)
    assert len(got) == OUT_LEN + 1  # one per step, then the final response
    width = 4
    for step, (result, _) in enumerate(got[:-1], start=1):
        out = result.as_numpy(protocol.OUTPUT_IDS)
        seq = result.as_numpy(protocol.SEQUENCE_LENGTH)
        assert out.shape == (2, 1, width + OUT_LEN)  # the full FT buffer every time
        for b in range(2):
            assert int(seq[b, 0]) == width + step
            assert out[b, 0, width : width + step].tolist() == want[b][:step]
    final = got[-1][0]
    seq = final.as_numpy(protocol.SEQUENCE_LENGTH)
    out = final.as_numpy(protocol.OUTPUT_IDS)
    assert [out[b, 0, width : int(seq[b, 0])].tolist() for b in range(2)] == want


def test_stream_error_is_one_final_error(streaming_server):
    srv, _ = streaming_server
    got = _collect(srv.grpc_url, ft_inputs([[1, 2, 3]], OUT_LEN, [5]))
    assert len(got) == 1
    assert got[0][1] is not None and "unknown task id 5" in str(got[0][1])
