"""Thousands of tasks are first-class: 10,000 tasks of a tiny model through `ftprefix convert
--prefix-dir`, `tasks add --prefix @FILE`, `tasks remove`, `tasks list`, a running `ftprefix serve`,
the OpenAI API's `/v1/models` and an unknown-model error, every answer right and every output a
summary, not a wall of names."""

from __future__ import annotations

import contextlib
import json

import httpx
import numpy as np
import pytest
from hf_reference import HFReference

from ftprefix import cli, layout
from ftprefix.client import Client
from ftprefix.demo import toy
from ftprefix.gateway.app import GatewaySettings
from ftprefix.gateway.run import make_server, start_in_thread
from ftprefix.serving.server import EmbeddedServer, free_port

N = 10_000
LAYERS, HIDDEN, HEADS = 2, 32, 4
PROMPT = [5, 17, 42, 7]
SMALL = 4096  # bytes: what a summary line may take, whatever the number of tasks


def _name(i: int) -> str:
    return f"t{i:05d}"


def _prefix(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal((1, LAYERS * 2 * HIDDEN)).astype(np.float32)


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("many")
    hf = root / "hf"
    toy.build_model(hf, hidden_size=HIDDEN, num_heads=HEADS, num_layers=LAYERS, seed=3)
    prefixes = root / "prefixes"
    prefixes.mkdir()
    for i in range(N):
        np.save(prefixes / f"{_name(i)}.npy", _prefix(i))
    return {"root": root, "hf": hf, "prefixes": prefixes, "out": root / "ft"}


def _run(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert cli.main(list(argv)) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def converted(many, tmp_path_factory) -> dict:
    """convert, add, remove: what a deployment with 10,000 tenants does (stdout kept per command:
    capsys is per test, this fixture per module)."""
    outputs = {}
    log = tmp_path_factory.mktemp("out") / "stdout"

    def run(*argv: str) -> str:
        with open(log, "w", encoding="utf-8") as f, contextlib.redirect_stdout(f):
            assert cli.main(list(argv)) == 0
        return log.read_text(encoding="utf-8")

    out = many["out"]
    outputs["convert"] = run(
        "convert", "--model", str(many["hf"]), "--prefix-dir", str(many["prefixes"]), "--tp", "1",
        "--dtype", "fp32", "--out", str(out),
    )  # fmt: skip
    listing = many["root"] / "more.txt"
    for extra in ("new1", "new2"):
        np.save(many["root"] / f"{extra}.npy", _prefix(N + len(extra)))
    listing.write_text("# two more tenants\nnew1=new1.npy\n\nnew2.npy\n", encoding="utf-8")
    outputs["add"] = run("tasks", "add", str(out), "--prefix", f"@{listing}")
    outputs["remove"] = run("tasks", "remove", str(out), *(_name(i) for i in range(0, N, 20)))
    return {**many, "outputs": outputs}


def test_commands_print_summaries_and_keep_every_id(converted) -> None:
    outputs = converted["outputs"]
    assert all(len(text) < SMALL for text in outputs.values()), {k: len(v) for k, v in outputs.items()}
    assert f"({N - 19:,} more tasks)" in outputs["convert"]
    assert [line.split()[:2] for line in outputs["add"].splitlines()[2:4]] == [
        [str(N), "new1"],
        [str(N + 1), "new2"],
    ]
    assert outputs["remove"].startswith(f"removed {N // 20} task(s): t00000 (id 0), t00020 (id 20)")
    cfg = layout.read_config(layout.ft_dir(converted["out"], 1))
    assert len(cfg.tasks) == N + 2 and len(cfg.tasks.retired) == N // 20
    assert cfg.tasks.find(_name(9999)).id == 9999 and cfg.tasks.find("new2").id == N + 1


def test_tasks_list_json_for_scripts(converted, capsys) -> None:
    listed = json.loads(_run(capsys, "tasks", "list", str(converted["out"]), "--json"))["tasks"]
    assert len(listed) == N + 2
    assert listed[20] == {
        "id": 20,
        "name": "_retired.20",
        "prompt_length": 1,
        "retired": True,
        "removed": _name(20),
    }
    assert listed[21] == {"id": 21, "name": _name(21), "prompt_length": 1, "retired": False}


def test_serve_answers_any_of_them_and_the_api_stays_small(converted) -> None:
    ft_dir = layout.ft_dir(converted["out"], 1)
    want = HFReference(converted["hf"], {_name(9999): _prefix(9999)}).greedy(
        PROMPT, _name(9999), 4, end_id=0
    )[0]
    with EmbeddedServer(ft_dir, watch_interval=None, stop_timeout=0) as server:
        with Client(server.grpc_url) as client:
            assert client.generate(PROMPT, task=_name(9999), max_new_tokens=4).token_ids == want
            info = client.model_info()
            assert len(info.tasks.live) == N + 2 - N // 20
        gateway = make_server(
            GatewaySettings(server.grpc_url, converted["hf"], "base"), "127.0.0.1", free_port()
        )
        start_in_thread(gateway)
        try:
            api = f"http://127.0.0.1:{gateway.config.port}/v1"
            models = httpx.get(api + "/models", timeout=60).json()["data"]
            assert len(models) == 1 + N + 2 - N // 20 and _name(20) not in {m["id"] for m in models}
            missing = httpx.post(api + "/completions", json={"model": "t0999x", "prompt": "hi"}, timeout=60)
            assert missing.status_code == 404 and len(missing.content) < 1024
            assert "did you mean" in missing.json()["error"]["message"]
            retired = httpx.post(
                api + "/completions", json={"model": "_retired.20", "prompt": "hi"}, timeout=60
            )
            assert retired.status_code == 404
        finally:
            gateway.should_exit = True
