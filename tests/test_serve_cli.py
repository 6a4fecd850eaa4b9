"""`ftprefix serve` as a user runs it: prints where it listens, serves, stops cleanly on Ctrl-C, and
its child processes never outlive it (even when it is killed with SIGKILL)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from serving_support import (
    HIDDEN,
    LAYERS,
    add_task,
    another_models_tokenizer,
    children_running,
    descendants,
    ft_inputs,
    make_converted,
    served_tasks,
    start_serve_cli,
    stop_serve_cli,
    wait_gone,
)

from ftprefix import layout, protocol
from ftprefix.demo.toy import random_prefix
from ftprefix.serving import tritonserver


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    _model, ft_dir, _ = make_converted(tmp_path_factory.mktemp("cli"), {"smile": 2}, seed=3)
    return ft_dir


def _start(
    ft_dir: Path, *extra: str, tmp: Path | None = None, graceful: bool = False, instances: int | None = 1
) -> tuple[subprocess.Popen, str, str]:
    """The running `ftprefix serve`, its gRPC address, and what it printed up to "ready". `tmp`: where
    its scratch directory goes (a serve killed with SIGKILL cannot remove it). `instances`: one
    engine process unless a test is about how many (None: serve's default, one per core), as each
    one imports torch for about 1.5 s of CPU."""
    env = None if tmp is None else {**os.environ, "TMPDIR": str(tmp)}
    layout = () if instances is None else ("--instances", str(instances))
    return start_serve_cli(ft_dir, *layout, *extra, env=env, graceful=graceful)


def _triton_under(proc: subprocess.Popen) -> int:
    """The pid of the one tritonserver that the serve process `proc` runs."""
    (triton,) = [
        p
        for p in descendants(proc.pid)
        if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].endswith(b"/tritonserver")
    ]
    return triton


def _python_envs() -> set[str]:
    """The python backend's directories in /tmp (it makes one as it starts: python_backend
    `src/pb_env.cc`, and removes it only when Triton exits by itself)."""
    return {p.name for p in Path("/tmp").glob("python_env_*")}


def _start_seeing_python_env(ft_dir: Path, *extra: str, **kwargs) -> tuple[subprocess.Popen, str, str, Path]:
    """`_start`, and the directory its Triton made in /tmp: the one that appeared while it started.
    Where another Triton started at the same time (the background runs' servers), which one is
    this Triton's is unknown: started again, a few times."""
    for _ in range(5):
        before = _python_envs()
        proc, grpc_url, text = _start(ft_dir, *extra, **kwargs)
        made = _python_envs() - before
        if len(made) == 1:
            return proc, grpc_url, text, Path("/tmp") / made.pop()
        stop_serve_cli(proc)
    pytest.fail("another Triton started beside every start: which directory is this one's is unknown")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "hang-up"])
def test_serve_prints_address_serves_and_stops_on_ctrl_c_or_a_hang_up(converted, signum):
    """A hang-up (the terminal or ssh session serve ran in closed) stops it as Ctrl-C does: by
    SIGHUP's default action serve died at once and left its Triton to the reaper, unsaid."""
    proc, grpc_url, _, python_env = _start_seeing_python_env(converted, graceful=True)
    try:
        children = descendants(proc.pid)
        assert children, "tritonserver runs as a child process"
        with grpcclient.InferenceServerClient(grpc_url) as client:
            res = client.infer(protocol.FT_MODEL, ft_inputs([[4, 5, 6]], 2))
            assert res.as_numpy(protocol.SEQUENCE_LENGTH).tolist() == [[5]]
        assert python_env.is_dir()
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 0
        assert proc.stderr is not None and proc.stderr.read().splitlines()[-1] == "ftprefix serve: stopping"
        assert wait_gone(children, seconds=5) == set()
        # Triton is killed once its requests are done: the directory it would remove at its own
        # exit is removed for it
        assert not python_env.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_tmp_that_takes_no_locks_starts_triton_without_the_start_lock(tmp_path, request):
    """The lock that lets ftprefix's Tritons start one at a time is a convenience: where /tmp takes
    no locks (NFS without its lock service) a server starts without it, and keeps no descriptor of
    it."""
    lock_file = tmp_path / "start.lock"
    held = tritonserver.StartLock(5.0, path=lock_file)
    assert held.held  # where locks work, it is taken
    held.release()
    request.getfixturevalue("file_system_without_locks")
    open_before = len(os.listdir("/proc/self/fd"))
    assert not tritonserver.StartLock(5.0, path=lock_file).held
    assert len(os.listdir("/proc/self/fd")) == open_before


def test_a_reader_of_its_output_that_went_away_stops_no_reload(converted, tmp_path):
    """`ftprefix serve DIR | tee serve.log`, and tee ends: what serve says after that meets a closed
    pipe. The watcher said its first reload there and died of it, and serve went on without one:
    no task added later was served, no engine process that died was started again."""
    home = tmp_path / "model"
    shutil.copytree(converted.parent, home)
    ft_dir = home / converted.name
    proc, grpc_url, _ = _start(ft_dir)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
        with grpcclient.InferenceServerClient(grpc_url) as client:
            for seed, name in enumerate(("first", "second")):
                add_task(ft_dir, name, random_prefix(3, LAYERS, HIDDEN, seed=40 + seed).numpy())
                deadline = time.monotonic() + 60
                while name not in served_tasks(client):
                    assert time.monotonic() < deadline, f"{name} was never served"
                    assert proc.poll() is None
                    time.sleep(0.1)  # bounded poll for the watcher; the assertion above is the check
            assert served_tasks(client) == ["smile", "first", "second"]
        assert proc.poll() is None
    finally:
        stop_serve_cli(proc)


def test_a_killed_serve_leaves_no_process_or_file_behind(converted, tmp_path):
    """serve killed (SIGKILL, the OOM killer) cannot stop Triton or clean up after it: Triton gets
    SIGTERM from the kernel and exits, and what is left of it ends too (reaper.py; test_reaper.py
    has the stubs that would not), its scratch directory and shared memory removed."""
    from ftprefix.serving import tritonserver

    proc, _, _, python_env = _start_seeing_python_env(converted, tmp=tmp_path)
    everything = descendants(proc.pid)
    try:
        regions = list(tritonserver.SHM_DIR.glob(f"{tritonserver.SHM_PREFIX}*_{proc.pid}_*"))
        assert regions and list(tmp_path.iterdir()) and python_env.is_dir()
        proc.kill()
        proc.wait()
        assert wait_gone(everything) == set()
        assert list(tmp_path.iterdir()) == [] and not any(r.exists() for r in regions)
        assert not python_env.exists()  # the python backend's, in /tmp whatever TMPDIR says
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(
    not Path("/proc/self/autogroup").exists(),
    reason="this kernel has no autogroups (CONFIG_SCHED_AUTOGROUP): niceness alone orders the processes",
)
def test_serve_under_nice_runs_triton_and_its_engines_at_that_niceness(converted):
    """Triton runs in a session of its own, and Linux shares the CPU between sessions before the
    processes in them (autogroups, sched(7)): under `nice -n 5 ftprefix serve`, its processes kept
    niceness 5 but their session took as much CPU as everything else beside it."""
    proc, _, _ = start_serve_cli(converted, "--instances", "1", niceness=5)
    try:
        triton = _triton_under(proc)
        (engine,) = children_running(triton, b"/fastertransformer/1/model.py")
        for pid in (triton, engine):
            assert os.getsid(pid) == triton  # a session of its own, as stop() needs
            assert Path(f"/proc/{pid}/autogroup").read_text().split()[-2:] == ["nice", "5"]
    finally:
        stop_serve_cli(proc)


def test_a_killed_tritonserver_ends_serve_with_exit_1_saying_so(converted, tmp_path):
    """For a supervisor (compose's restart policy, Kubernetes) to start it again; a SIGKILL is what
    the kernel's out-of-memory killer sends, and Triton's log says nothing of it."""
    proc, _, _ = _start(converted, tmp=tmp_path)
    try:
        triton = _triton_under(proc)
        os.kill(triton, signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
        said = proc.stderr.read().strip().splitlines()
        assert said[-1].startswith("ftprefix serve: tritonserver was killed (SIGKILL; "), said
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-queue-delay-us", "-1", "--max-queue-delay-us must be between 0 and"),
        ("--stop-timeout", "-1", "--stop-timeout must be 0 or more seconds (and finite), got -1"),
        ("--stop-timeout", "nan", "--stop-timeout must be 0 or more seconds (and finite), got nan"),
        ("--stop-timeout", "inf", "--stop-timeout must be 0 or more seconds (and finite), got inf"),
        # Triton writes the address before ":port" as it is: no IPv6 address can listen
        ("--host", "::1", "--host ::1: no IPv4 address"),
    ],
)
def test_serve_refuses_a_bad_setting_before_starting_anything(
    converted, capsys, monkeypatch, tmp_path, flag, value, message
):
    from ftprefix.cli import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = descendants(os.getpid())
    assert main(["serve", str(converted), "--grpc-port", "0", "--http-port", "0", flag, value]) == 2
    assert descendants(os.getpid()) == before
    assert list(tmp_path.iterdir()) == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--grpc-port", "{p}", "--http-port", "{p}"], "--grpc-port and --http-port are both {p}"),
        (["--http-port", "{p}", "--metrics-port", "{p}"], "--http-port and --metrics-port are both {p}"),
        (
            ["--grpc-port", "{p}", "--tokenizer", "{hf}", "--openai-port", "{p}"],
            "--grpc-port and --openai-port are both {p}",
        ),
    ],
    ids=["grpc-http", "http-metrics", "grpc-openai"],
)
def test_serve_refuses_one_port_for_two_listeners_before_starting_anything(
    converted, capsys, monkeypatch, tmp_path, flags, message
):
    """Triton itself answers this with its whole usage text; the gateway with a traceback."""
    from ftprefix.cli import main
    from ftprefix.serving.server import free_port

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    port, hf = str(free_port()), str(converted.parent.parent / "hf")
    before = descendants(os.getpid())
    argv = ["serve", str(converted), "--grpc-port", "0", "--http-port", "0"]
    assert main(argv + [flag.format(p=port, hf=hf) for flag in flags]) == 2
    assert descendants(os.getpid()) == before
    assert list(tmp_path.iterdir()) == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(p=port) in err


def test_another_models_tokenizer_is_refused_before_starting_anything(
    converted, capsys, monkeypatch, tmp_path
):
    """A tokenizer giving ids the model has no embedding for belongs to another model: refused in
    one line by serve (text models, or the gateway's alone on a streaming model) and triton-repo,
    before anything starts or is written. Served, it got a 400 for every prompt with such a token
    and answered prompts that avoid them from the wrong ids."""
    from ftprefix.cli import main

    vocab = layout.read_config(converted).vocab_size
    other = another_models_tokenizer(converted.parent.parent / "hf", tmp_path / "other-tokenizer", vocab)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    before = descendants(os.getpid())
    serve = ["serve", str(converted), "--grpc-port", "0", "--http-port", "0", "--tokenizer", str(other)]
    for argv in (
        serve,
        [*serve, "--streaming", "--openai-port", "0"],
        ["triton-repo", str(converted), "--tokenizer", str(other), "--out", str(tmp_path / "deploy")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == (
            f"ftprefix {argv[0]}: error: the tokenizer {other} gives token ids up to {vocab + 3}, and the "
            f"model {converted.resolve()} has embeddings for ids 0 to {vocab - 1} only (config.ini "
            f"vocab_size {vocab}): it is another model's tokenizer; give the one this model was "
            "trained with\n"
        )
    assert descendants(os.getpid()) == before
    assert list(scratch.iterdir()) == [] and not (tmp_path / "deploy").exists()


def test_a_host_name_is_served_on_its_ipv4_address(converted) -> None:
    """Triton given the name `localhost` did not get ready within a minute; it is given the
    name's IPv4 address."""
    from ftprefix.client import Client
    from ftprefix.serving.server import EmbeddedServer

    with EmbeddedServer(
        converted, host="localhost", watch_interval=None, stop_timeout=0, instances=1
    ) as server:
        assert server.grpc_url.startswith("127.0.0.1:")
        with Client(server.grpc_url) as client:
            assert [t.name for t in client.tasks()] == ["smile"]


def test_a_failed_start_says_triton_s_reason_first(converted) -> None:
    """Triton prints its options table (and, for a bad option, its usage text) before the line it
    exits on: that line comes first. Here the port is taken after it was checked, as another
    process could."""
    from ftprefix.serving.server import EmbeddedServer, ServerError

    server = EmbeddedServer(converted, watch_interval=None, stop_timeout=0)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", server.grpc_port))
        taken.listen()
        with pytest.raises(ServerError) as failed:
            server.start()
    first = str(failed.value).splitlines()[0]
    assert first == (
        "tritonserver exited with code 1 while starting: failed to start GRPC service: "
        f"Unavailable - Socket '127.0.0.1:{server.grpc_port}' already in use"
    )


def test_a_model_that_fails_to_load_under_a_name_that_is_not_ascii_says_why(
    converted, tmp_path, monkeypatch
) -> None:
    """Inside Triton's python backend such a name cannot be encoded as UTF-8, and a message that
    held it took the stub down: Triton said only "Stub process ... is not healthy"."""
    from ftprefix import layout
    from ftprefix.serving.server import EmbeddedServer, ServerError

    # the damage below is refused before Triton starts (test_a_conversion_missing_a_file_...): here
    # the load inside the stub is what fails, as a file damaged after that check makes it
    monkeypatch.setattr(layout, "check_weight_files", lambda directory, cfg: None)
    home = tmp_path / "田中"
    shutil.copytree(converted, home / converted.name)
    damaged = home / converted.name / "model.prefix_prompt.smile.weight.0.bin"
    size = damaged.stat().st_size
    os.truncate(damaged, 10)
    with pytest.raises(ServerError) as failed:
        EmbeddedServer(home, watch_interval=None, stop_timeout=0).start()
    assert (
        str(failed.value)
        .splitlines()[0]
        .startswith(
            "tritonserver exited with code 1 while starting: failed to load 'fastertransformer' version 1: "
            f"Internal: UserError: {damaged} has 10 bytes, expected {size}"
        )
    )


def test_free_ports_are_distinct_and_clear_of_the_taken_ones() -> None:
    """Ports picked one after another can come back equal (a CI run once gave Triton the same
    port for gRPC and HTTP): each socket stays bound until all are picked."""
    from ftprefix.serving.server import free_ports

    for _ in range(200):
        first = free_ports(1)[0]
        ports = free_ports(3, taken={first})
        assert len(set(ports)) == 3 and first not in ports


# Triton's spellings (tritonserver --grpc-port), and the ones earlier compose files and manifests carry
@pytest.mark.parametrize("spelling", [("--grpc-port", "--http-port"), ("--port-grpc", "--port-http")])
def test_serve_refuses_a_port_in_use_before_starting_anything(
    converted, capsys, monkeypatch, tmp_path, spelling
):
    from ftprefix.cli import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a server's scratch directory would go

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = descendants(os.getpid())
        assert main(["serve", str(converted), spelling[0], str(port), spelling[1], "0"]) == 2
        assert descendants(os.getpid()) == before  # no tritonserver was started
    assert list(tmp_path.iterdir()) == []  # and no scratch directory left behind
    err = capsys.readouterr().err.strip()
    assert err == (
        f"ftprefix serve: error: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "pass another --grpc-port (0 = any free port)"
    )


def _start_with_api(
    converted: Path, *extra: str, graceful: bool = False, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, int, str]:
    """`ftprefix serve` with the OpenAI API beside Triton, one engine instance (as `_start`): the
    process, the API's port, and what it printed up to "ready"."""
    from ftprefix.serving.server import free_port

    port = free_port()
    hf = str(converted.parent.parent / "hf")
    api = ("--tokenizer", hf, "--openai-port", str(port))
    proc, _, printed = start_serve_cli(
        converted, "--instances", "1", *api, *extra, env=env, graceful=graceful
    )
    return proc, port, printed


def test_serve_with_openai_port_serves_the_openai_api_and_metrics_beside_triton(converted):
    import httpx

    from ftprefix.serving.server import free_port

    metrics = free_port()
    # graceful, as a user's: Triton unloads its models on SIGTERM
    proc, port, printed = _start_with_api(converted, "--metrics-port", str(metrics), graceful=True)
    try:
        scraped = httpx.get(f"http://127.0.0.1:{metrics}/metrics").text  # what Prometheus scrapes
        assert 'nv_inference_request_success{model="fastertransformer"' in scraped
        assert f"OpenAI-compatible API on http://127.0.0.1:{port}/v1" in printed
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["hf", "smile"]  # base named as the conversion's model
        request = {"model": "smile", "prompt": "hi", "max_tokens": 2}
        assert httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=request).status_code == 200
        # SIGTERM, as Docker and Kubernetes stop it: the gateway goes first, so its connection to
        # Triton's HTTP port (kept alive) does not hold Triton's exit for Triton's whole exit timeout,
        # 10 s + 2 s per model and instance, after which it would not even unload its models
        instances = int(re.search(r"(\d+) engine instance", printed)[1])
        exit_timeout = 10 + 2 * (instances + len(["fastertransformer", "pre", "post", "ensemble"]))
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert time.monotonic() - started < exit_timeout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_generation_longer_than_request_timeout_is_a_504(converted):
    """--request-timeout reaches the gateway: Triton holds this lone request for its minute-long
    batching window, longer than the half second the gateway gives it."""
    import httpx

    proc, port, _ = _start_with_api(converted, "--max-queue-delay-us", "60000000", "--request-timeout", "0.5")
    try:
        request = {"model": "smile", "prompt": "hi", "max_tokens": 2}
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=request, timeout=30)
        assert answer.status_code == 504 and answer.json()["error"]["code"] == "timeout"
    finally:
        proc.send_signal(signal.SIGINT)  # a clean stop, which removes its scratch directory
        assert proc.wait(timeout=60) == 0


def test_a_proxy_in_the_environment_is_not_used_for_this_machine(converted):
    """Corporate machines set http_proxy / https_proxy; a proxy cannot reach this machine's
    loopback. serve's readiness probe (urllib), the client's and the gateway's gRPC (which honours
    those variables for every host that no_proxy does not list) must go straight to a server on
    127.0.0.1, as Go's net/http does: with them set, serve once waited its whole start timeout for
    a Triton that was ready, and the demo's client failed to connect."""
    import httpx

    proxy = socket.create_server(("127.0.0.1", 0))  # a proxy that would only take connections
    address = f"http://127.0.0.1:{proxy.getsockname()[1]}"
    variables = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy", "all_proxy")
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "no_grpc_proxy")}
    env.update({name: address for name in variables})
    proc, port, printed = _start_with_api(converted, env=env)
    try:
        grpc_url = re.search(r"listening on grpc (\S+)", printed)[1]
        ask = [sys.executable, "-m", "ftprefix.cli", "generate", "--url", grpc_url, "--token-ids"]
        ask += ["--task", "smile", "--max-new-tokens", "3", "4,5,6"]
        direct = subprocess.run(ask, capture_output=True, text=True, timeout=120, check=False)
        proxied = subprocess.run(ask, capture_output=True, text=True, timeout=120, env=env, check=False)
        assert direct.returncode == 0 and direct.stdout, direct.stderr
        assert (proxied.returncode, proxied.stdout) == (0, direct.stdout), proxied.stderr
        request = {"model": "smile", "prompt": "hi", "max_tokens": 2}  # the gateway's way to Triton
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=request, timeout=60)
        assert answer.status_code == 200, answer.text
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    proxy.setblocking(False)
    with pytest.raises(BlockingIOError):  # nobody ever connected to the proxy
        proxy.accept()
    proxy.close()


@pytest.mark.parametrize("form", ["model-and-deployment", "deployment-alone"])
def test_serve_takes_the_settings_of_a_deployment(form, converted, tmp_path, capsys):
    """What a deployment's compose.cpu.yaml runs, `ftprefix serve CONVERTED --deployment DIR`, and
    the same without Docker, `ftprefix serve DIR`: the conversion its .env names (here relative to
    DIR, as compose reads it, not to the working directory), and with the OpenAI API, the key and
    the base model's name its .env gives the compose files' gateway."""
    import httpx

    from ftprefix.cli import main
    from ftprefix.serving.server import free_port

    deploy = tmp_path / "deploy"
    hf = converted.parent.parent / "hf"
    argv = ["triton-repo", str(converted.parent), "--out", str(deploy), "--tokenizer", str(hf)]
    assert main([*argv, "--streaming", "--max-queue-delay-us", "20000"]) == 0
    capsys.readouterr()
    for given in ([str(converted.parent), "--deployment", str(deploy)], [str(deploy)]):
        assert main(["serve", *given, "--streaming"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--streaming comes from the deployment {deploy}" in err
    if form == "model-and-deployment":
        proc, grpc_url, text = _start(converted.parent, "--deployment", str(deploy), instances=None)
    else:
        env = deploy / ".env"
        user_env = env.read_text()
        env.write_text(user_env + "FTPREFIX_MODEL_DIR=./nowhere\n")
        assert main(["serve", str(deploy)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "FTPREFIX_MODEL_DIR=./nowhere" in err and "not a directory" in err
        relative = os.path.relpath(converted.parent, deploy)
        assert not Path(relative).is_dir()  # from the tests' working directory it names nothing
        env.write_text(
            user_env + f"FTPREFIX_MODEL_DIR={relative}\nFTPREFIX_API_KEY=s3cret\nFTPREFIX_BASE_MODEL=house\n"
        )
        port = free_port()
        environ = {k: v for k, v in os.environ.items() if k != "FTPREFIX_API_KEY"}
        proc, grpc_url, text = start_serve_cli(deploy, "--openai-port", str(port), env=environ)
    try:
        assert "models fastertransformer from" in text  # streaming: no text ensemble on Triton
        with grpcclient.InferenceServerClient(grpc_url) as client:
            config = client.get_model_config(protocol.FT_MODEL, as_json=True)["config"]
        assert config["model_transaction_policy"]["decoupled"] is True
        assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 20000
        if form == "deployment-alone":
            models = f"http://127.0.0.1:{port}/v1/models"
            assert httpx.get(models).status_code == 401
            listed = httpx.get(models, headers={"Authorization": "Bearer s3cret"}).json()["data"]
            assert "house" in [m["id"] for m in listed]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0


def test_the_openai_api_of_a_deployment_without_a_tokenizer_says_how_to_get_one(converted, tmp_path, capsys):
    from ftprefix.cli import main

    deploy = tmp_path / "deploy"
    assert main(["triton-repo", str(converted.parent), "--out", str(deploy)]) == 0  # no --tokenizer
    capsys.readouterr()
    assert main(["serve", str(deploy), "--openai-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"ftprefix serve: error: --openai-port needs a tokenizer, and the deployment {deploy} has none: "
        "write it again with --tokenizer HF_DIR (ftprefix triton-repo)\n"
    )


def _stubs(pid: int, model: str) -> list[int]:
    """The python backend's stub processes (one per model instance) of `model` under `pid`."""
    found = []
    for p in descendants(pid):
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"triton_python_backend_stub") and f"/{model}/".encode() in argv[1]:
            found.append(p)
    return found


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


def test_serve_runs_the_instances_and_threads_asked_for_and_says_so(converted):
    proc, grpc_url, text = _start(converted, "--threads", "2", instances=3)
    try:
        assert re.search(r"3 engine instance\(s\) x 2 thread\(s\); cores: \d+ \(", text), text
        assert "ftprefix serve: weights mapped by every instance from the conversion's files\n" in text
        with grpcclient.InferenceServerClient(grpc_url) as client:
            config = client.get_model_config(protocol.FT_MODEL, as_json=True)["config"]
            assert [int(g["count"]) for g in config["instance_group"]] == [3]
            assert [g["kind"] for g in config["instance_group"]] == ["KIND_CPU"]
            res = client.infer(protocol.FT_MODEL, ft_inputs([[4, 5, 6]], 2))
            assert res.as_numpy(protocol.SEQUENCE_LENGTH).tolist() == [[5]]
        stubs = _stubs(proc.pid, protocol.FT_MODEL)
        assert len(stubs) == 3
        for stub in stubs:  # each engine process: a pool of 2 threads that sleep while waiting
            env = _environ(stub)
            assert (env["OMP_NUM_THREADS"], env["OMP_WAIT_POLICY"]) == ("2", "PASSIVE")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0


def test_serve_by_default_runs_a_single_threaded_instance_per_core(converted):
    proc, _, text = _start(converted, instances=None)
    try:
        # the first line, said before the start (the models' line comes once Triton is ready)
        first = text.splitlines()[0]
        match = re.fullmatch(
            r"ftprefix serve: starting (\d+) engine instance\(s\) x 1 thread\(s\); cores: (\d+) \(.+\)", first
        )
        assert match, text
        instances, cores = int(match.group(1)), int(match.group(2))
        assert 1 <= cores <= len(os.sched_getaffinity(0))
        assert instances == min(cores, 8)  # the demo model is small: memory holds them all
        assert len(_stubs(proc.pid, protocol.FT_MODEL)) == instances
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0


def test_serve_refuses_an_impossible_layout_before_starting_anything(converted, capsys):
    from ftprefix.cli import main

    for flag, value, says in (
        ("--instances", "0", "at least 1"),
        ("--threads", "0", "at least 1"),
        ("--instances", "100000", "at most 256"),
        ("--threads", "99999999999999999999", "at most 1024"),
    ):
        assert main(["serve", str(converted), flag, value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{flag} must be {says}, got {value}" in err


def test_an_openai_context_past_the_cpu_engines_rows_is_refused_before_starting_anything(
    converted, capsys, monkeypatch, tmp_path
):
    """A request between the two limits passed the API and the engine refused it: its caller got a
    400 that could not say why (the engine's reason is the operator's, in the log)."""
    from ftprefix.cli import main
    from ftprefix.commands.serve import _check_context
    from ftprefix.engine import Engine, GenerationRequest

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = descendants(os.getpid())
    hf = converted.parent.parent / "hf"
    serve = ["serve", str(converted), "--grpc-port", "0", "--http-port", "0", "--tokenizer", str(hf)]
    assert main([*serve, "--openai-port", "0", "--max-model-len", "100000"]) == 2
    assert descendants(os.getpid()) == before and list(tmp_path.iterdir()) == []
    err = capsys.readouterr().err
    fits = int(err.rpartition("--max-model-len ")[2].split()[0])
    assert err == (
        "ftprefix serve: error: --max-model-len 100000 does not fit the CPU server, whose rows hold "
        f"{fits + 2} tokens with the prefix, 2 for the longest task here: give --max-model-len {fits} "
        "or less\n"
    )
    # the engine's own limit: a row of `fits` tokens with the task's prefix runs, one more does not
    engine = Engine.load(converted)
    engine.validate([GenerationRequest(input_ids=[1] * (fits - 1), request_output_len=1, task_id=0)])
    with pytest.raises(ValueError, match="exceeds the limit"):
        engine.validate([GenerationRequest(input_ids=[1] * fits, request_output_len=1, task_id=0)])
    _check_context(fits, converted)  # the most that fits is taken


def _refused_before_starting(converted: Path, tmp: Path, monkeypatch, capsys) -> str:
    """`ftprefix serve CONVERTED` with TMPDIR `tmp`: it exits 2 having started no process and left
    nothing in `tmp`; what it said."""
    from ftprefix.cli import main

    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    before = descendants(os.getpid())
    assert main(["serve", str(converted), "--grpc-port", "0", "--http-port", "0"]) == 2
    assert descendants(os.getpid()) == before and list(tmp.iterdir()) == []
    return capsys.readouterr().err


def test_a_temporary_directory_that_is_not_ascii_is_refused_before_starting_anything(
    converted, capsys, monkeypatch, tmp_path
):
    """The model repository goes under TMPDIR, and Triton's python backend cannot import a model
    from a path that is not ASCII: without this check, Triton fails after seconds with a page of
    UnicodeEncodeError from importlib."""
    tmp = tmp_path / "作業"
    err = _refused_before_starting(converted, tmp, monkeypatch, capsys)
    assert err == (
        f"ftprefix serve: error: the server's model repository would be under {tmp}, and Triton's "
        "python backend cannot load models from a path that is not ASCII: set TMPDIR to a "
        "directory whose path is ASCII\n"
    )


def test_a_conversion_missing_a_file_is_refused_in_one_line_before_starting_anything(
    converted, capsys, monkeypatch, tmp_path
):
    """Triton had started and failed to load the model, with a page of its log and the python
    model's stack, all for one missing file."""
    copy = tmp_path / "model"
    shutil.copytree(converted.parent, copy)
    ft_dir = copy / converted.name
    (ft_dir / "model.prefix_prompt.smile.weight.0.bin").unlink()
    assert _refused_before_starting(copy, tmp_path / "scratch", monkeypatch, capsys) == (
        f"ftprefix serve: error: missing weight file {ft_dir}/model.prefix_prompt.smile.weight.0.bin: "
        f"the conversion in {ft_dir} is incomplete or was changed; convert again\n"
    )


def _regions(prefix: str) -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").glob(f"{prefix}*"))


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="the python backend's regions live in /dev/shm")
def test_a_killed_triton_leaves_no_shared_memory_behind(converted):
    from ftprefix.serving.server import EmbeddedServer

    server = EmbeddedServer(converted, watch_interval=None, instances=2, stop_timeout=0).start()
    try:
        mine = _regions(server._shm_prefix)
        assert len(mine) >= 2  # a region per model instance, named as this server's
        os.killpg(server.pid, signal.SIGKILL)  # the OOM killer: nothing runs its clean-up
        server._proc.wait()
        assert _regions(server._shm_prefix) == mine  # left behind, as upstream leaves them
    finally:
        server.stop()
    assert _regions(server._shm_prefix) == []


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="the python backend's regions live in /dev/shm")
def test_a_new_server_removes_what_killed_servers_left_and_nothing_else(converted):
    from ftprefix.serving.server import EmbeddedServer

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs: the starter of a server killed with SIGKILL
    token = os.urandom(4).hex()
    namespace = os.stat("/proc/self/ns/pid").st_ino
    orphan = Path(f"/dev/shm/ftprefix_{namespace}_{gone.pid}_{token}_a1b2")
    running = Path(f"/dev/shm/ftprefix_{namespace}_{os.getpid()}_{token}_c3d4")  # a live server's
    # a dead pid of another pid namespace (a container sharing /dev/shm): not ours to judge
    elsewhere = Path(f"/dev/shm/ftprefix_{namespace + 1}_{gone.pid}_{token}_e5f6")
    foreign = Path(f"/dev/shm/triton_python_backend_shm_region_{token}")  # not ftprefix's
    for path in (orphan, running, foreign, elsewhere):
        path.write_bytes(b"\0" * 16)
    try:
        with EmbeddedServer(converted, watch_interval=None, instances=1, stop_timeout=0) as server:
            assert not orphan.exists()
            assert running.exists() and foreign.exists() and elsewhere.exists()
            assert _regions(server._shm_prefix)
            processes = {server.pid, *descendants(server.pid)}  # tritonserver and its stubs
        # stop_timeout=0 kills at once: none of the server's processes or regions stay
        assert _regions(server._shm_prefix) == []
        assert wait_gone(processes, seconds=5) == set()
    finally:
        for path in (orphan, running, foreign, elsewhere):
            path.unlink(missing_ok=True)
