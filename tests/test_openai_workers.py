"""`ftprefix openai --workers N` as a user starts it, in front of a real `ftprefix serve`: both
workers answer on the one port, /metrics counts every request whichever worker is scraped, an
edit of the keys file reaches every worker, and stopping the gateway stops all of them.

Which worker answered a request is told by its request id, whose first half is the answering
process's own (gateway/errors.py). Each request goes on a new connection: the kernel spreads new
connections over the workers by their addresses (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from gateway_support import metric_samples
from serving_support import convert_toy, signals_as_in_a_terminal

from ftprefix.serving.server import EmbeddedServer, free_port

TASKS = {"smile": 3}
BASE = "toy-base"
REQUESTS = 40


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    return convert_toy(tmp_path_factory.mktemp("workers"), TASKS, seed=5)


@pytest.fixture(scope="module")
def triton(model):
    with EmbeddedServer(model["ft"], watch_interval=None, stop_timeout=0) as server:
        yield server


def _start(
    triton: EmbeddedServer,
    model: dict,
    keys: Path,
    *extra: str,
    open_files: int | None = None,
    tmp: Path | None = None,
) -> tuple[subprocess.Popen, str, list[psutil.Process]]:
    """The gateway's process, its URL and its workers, once it says they all listen; started with
    a soft limit of `open_files` where given (the hard limit as it is), and with `tmp` as its
    TMPDIR where given."""
    argv = [sys.executable, "-m", "ftprefix.cli", "openai", "--url", triton.grpc_url]
    argv += ["--http-url", triton.http_url, "--tokenizer", str(model["hf"]), "--base-model", BASE]
    argv += ["--port", "0", "--api-keys", str(keys), *extra]  # any free port: the one it prints

    def as_started() -> None:
        signals_as_in_a_terminal()
        if open_files is not None:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (open_files, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
            )

    env = None if tmp is None else {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen(  # a process group of its own, as a terminal's job has
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_started,
        env=env,
        process_group=0,
    )
    assert proc.stdout is not None
    url = None
    for line in proc.stdout:  # ends at EOF if the gateway fails; pytest's timeout is the bound
        printed = re.match(r"ftprefix openai: (http://127\.0\.0\.1:\d+)/v1 in front of ", line)
        url = printed.group(1) if printed else url
        if "workers listening" in line:
            assert url is not None and not url.endswith(":0")
            pids = line.split("(pids ")[1].rstrip(")\n").split(", ")
            return proc, url, [psutil.Process(int(pid)) for pid in pids]
    proc.wait()
    raise AssertionError(f"the gateway did not start: {proc.stderr.read() if proc.stderr else ''}")


def _wait_until_listening(url: str, proc: subprocess.Popen) -> None:
    """Until the gateway at `url` answers its health check (bounded poll; it must not exit)."""
    import time

    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.ConnectError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None


def _worker_of(response: httpx.Response) -> str:
    return response.headers["x-request-id"][:16]  # the answering process's half


def _complete(url: str, key: str) -> httpx.Response:
    body = {"model": BASE, "prompt": "hello there", "max_tokens": 2, "temperature": 0}
    return httpx.post(
        url + "/v1/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=60
    )


def _count(url: str, name: str, **labels: str) -> float:
    return metric_samples(url).get((name, tuple(sorted(labels.items()))), 0.0)


def test_two_workers_share_the_port_the_keys_and_the_metrics(triton, model, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"key-a": {"tenant": "acme", "tasks": "*"}}))
    proc, url, workers = _start(triton, model, keys, "--workers", "2")
    try:
        assert len(workers) == 2 and all(w.ppid() == proc.pid for w in workers)
        answers = [_complete(url, "key-a") for _ in range(REQUESTS)]
        assert [a.status_code for a in answers] == [200] * REQUESTS
        assert len({_worker_of(a) for a in answers}) == 2  # both workers answered
        for _ in range(6):  # each scrape on a new connection: every worker's sums are the same
            assert _count(url, "ftprefix_requests_total", model=BASE, status="200") == REQUESTS
            assert _count(url, "ftprefix_tenant_requests_total", tenant="acme", status="200") == REQUESTS
            assert _count(url, "ftprefix_in_flight_requests") == 0

        # a new key and an old one removed: every worker reads the file again
        replacement = tmp_path / "keys.new"
        replacement.write_text(json.dumps({"key-b": {"tenant": "beta", "tasks": "*"}}))
        os.replace(replacement, keys)
        new = [_complete(url, "key-b") for _ in range(REQUESTS // 2)]
        old = [_complete(url, "key-a") for _ in range(REQUESTS // 2)]
        assert [a.status_code for a in new] == [200] * (REQUESTS // 2)
        assert [a.status_code for a in old] == [401] * (REQUESTS // 2)
        assert len({_worker_of(a) for a in new}) == len({_worker_of(a) for a in old}) == 2
        assert _count(url, "ftprefix_tenant_requests_total", tenant="beta", status="200") == REQUESTS // 2
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0
    assert not psutil.wait_procs(workers, timeout=30)[1]  # every worker is gone


def test_a_worker_that_dies_stops_the_gateway_with_a_one_line_error(triton, model, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"key-a": ["smile"]}))
    proc, url, workers = _start(triton, model, keys, "--workers", "2")
    workers[1].kill()
    code = proc.wait(timeout=60)
    err = proc.stderr.read() if proc.stderr else ""
    assert code == 1
    assert "ftprefix openai: error: worker 1 exited with code -9; stopping the others\n" in err
    assert not psutil.wait_procs(workers, timeout=30)[1]
    with pytest.raises(httpx.ConnectError):  # nothing listens any more
        httpx.get(url + "/health", timeout=5)


def test_a_killed_gateway_leaves_no_worker_or_metrics_file_behind(triton, model, tmp_path: Path) -> None:
    """Killed itself (SIGKILL, the out-of-memory killer), the supervisor can stop nothing: its
    workers went on serving the port with no supervisor, the next gateway's start found the port
    taken, and the workers' metrics directory stayed in /tmp."""
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"key-a": {"tenant": "acme", "tasks": "*"}}))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc, url, workers = _start(triton, model, keys, "--workers", "2", tmp=scratch)
    try:
        assert _complete(url, "key-a").status_code == 200  # the workers have written metrics
        assert [p.name[:16] for p in scratch.iterdir()] == ["ftprefix-metrics"]
    finally:
        proc.kill()
        proc.wait()
    left = psutil.wait_procs(workers, timeout=30)[1]
    for worker in left:  # not to outlive the test where they outlived the gateway
        worker.kill()
    assert not left  # every worker is gone
    assert list(scratch.iterdir()) == []
    with pytest.raises(httpx.ConnectError):  # nothing listens any more
        httpx.get(url + "/health", timeout=5)


@pytest.mark.parametrize("workers", ["0", "-1", "257"])
def test_a_bad_worker_count_is_one_line_exit_2(workers: str, model, capsys) -> None:
    from ftprefix import cli

    argv = ["openai", "--tokenizer", str(model["hf"]), "--port", str(free_port()), "--workers", workers]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--workers {workers}: use 1 to 256" in err


def test_fewer_places_than_workers_is_one_line_exit_2(model, capsys) -> None:
    from ftprefix import cli

    argv = ["openai", "--tokenizer", str(model["hf"]), "--port", str(free_port()), "--workers", "3"]
    assert cli.main([*argv, "--max-in-flight", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-in-flight 2 is fewer places than --workers 3" in err


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--max-in-flight", "0", "--max-in-flight must be at least 1, got 0"),
        ("--queue-timeout", "0", "--queue-timeout must be more than 0 seconds, got 0"),
        ("--queue-timeout", "nan", "--queue-timeout must be more than 0 seconds, got nan"),
        ("--max-model-len", "1", "--max-model-len must be within 2 to 2**31 - 1 tokens, got 1"),
        (
            "--max-model-len",
            "2147483648",
            "--max-model-len must be within 2 to 2**31 - 1 tokens, got 2147483648",
        ),
        ("--request-timeout", "0", "--request-timeout must be more than 0 seconds (and finite), got 0"),
        ("--request-timeout", "inf", "--request-timeout must be more than 0 seconds (and finite), got inf"),
        ("--stop-timeout", "-1", "--stop-timeout must be 0 or more seconds (and finite), got -1"),
        ("--stop-timeout", "inf", "--stop-timeout must be 0 or more seconds (and finite), got inf"),
        ("--stop-timeout", "nan", "--stop-timeout must be 0 or more seconds (and finite), got nan"),
    ],
)
def test_a_bad_gateway_limit_is_one_line_exit_2(option: str, value: str, says: str, model, capsys) -> None:
    from ftprefix import cli

    argv = ["openai", "--tokenizer", str(model["hf"]), "--port", str(free_port()), option, value]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err


@pytest.mark.parametrize("hang_up", [False, True], ids=["sigterm", "hang-up"])
def test_sigterm_gives_requests_the_stop_timeout_then_ends_them_as_failures(
    model, tmp_path: Path, hang_up: bool
) -> None:
    """As Docker or Kubernetes stop it: the workers finish what they can within --stop-timeout,
    then a stream still running gets an error event and [DONE], an answer not yet sent a 503 to
    retry; none is cut off bare, and the gateway exits 0. A hang-up (its terminal closed) sends
    SIGHUP to all its processes at once, the workers included: they stop the same way (by SIGHUP's
    default action they were gone at once, every request cut off)."""
    import threading
    import time

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"key-a": "*"}))
    # Triton holds a lone request for its whole batching window: both are still there at the stop
    held = EmbeddedServer(
        model["ft"], streaming=True, watch_interval=None, stop_timeout=0, max_queue_delay_us=60_000_000
    )
    with held:
        proc, url, workers = _start(held, model, keys, "--workers", "2", "--stop-timeout", "0.5")
        events: list[str] = []
        try:
            answers: list[httpx.Response] = []
            sender = threading.Thread(target=lambda: answers.append(_complete(url, "key-a")))
            sender.start()
            body = {"model": BASE, "prompt": "hello there", "max_tokens": 2, "stream": True}
            headers = {"authorization": "Bearer key-a"}
            with httpx.stream("POST", url + "/v1/completions", json=body, headers=headers, timeout=60) as s:
                assert s.status_code == 200
                deadline = time.monotonic() + 60
                while _count(url, "ftprefix_in_flight_requests") < 2:
                    assert time.monotonic() < deadline  # bounded poll: both requests are at Triton
                if hang_up:
                    os.killpg(proc.pid, signal.SIGHUP)  # the terminal's process group: all of it
                else:
                    proc.send_signal(signal.SIGTERM)
                events += [line for line in s.iter_lines() if line.startswith("data: ")]
            sender.join(timeout=60)
        finally:
            if proc.returncode is None and not events:  # failed before its SIGTERM
                proc.kill()
            code = proc.wait(timeout=60)
    assert code == 0 and not psutil.wait_procs(workers, timeout=30)[1]
    error = {
        "message": "the server is shutting down; try again",
        "type": "service_unavailable",
        "param": None,
        "code": "server_shutting_down",
    }
    assert events == [f"data: {json.dumps({'error': error}, separators=(',', ':'))}", "data: [DONE]"]
    (answer,) = answers
    assert (answer.status_code, answer.json()) == (503, {"error": error})
    assert answer.headers["retry-after"] == "1"


def test_the_workers_split_the_places_at_triton(model, tmp_path: Path) -> None:
    """--max-in-flight holds for the whole gateway: with 2 workers and 2 places, at most 2 requests
    are at Triton whichever workers the requests reach (each worker keeping 2 would let 4 wait
    there, first come first served). Triton holds every request for its batching window, so all
    six are in the gateway at once."""
    import threading
    import time

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"key-a": "*"}))
    held = EmbeddedServer(model["ft"], watch_interval=None, stop_timeout=0, max_queue_delay_us=60_000_000)
    with held:
        proc, url, workers = _start(
            held, model, keys, "--workers", "2", "--max-in-flight", "2", "--stop-timeout", "0.5"
        )
        try:
            senders = [threading.Thread(target=_complete, args=(url, "key-a")) for _ in range(6)]
            for sender in senders:  # each on a connection of its own: the kernel spreads them
                sender.start()
            deadline = time.monotonic() + 60
            while True:  # bounded poll: until all six are in the gateway
                samples = metric_samples(url)
                in_flight = samples.get(("ftprefix_in_flight_requests", ()), 0.0)
                waiting = samples.get(("ftprefix_waiting_requests", ()), 0.0)
                if in_flight + waiting == 6:
                    break
                assert time.monotonic() < deadline
            assert in_flight <= 2 and waiting >= 4
        finally:
            proc.send_signal(signal.SIGTERM)  # the requests still held end as 503s
            code = proc.wait(timeout=60)
            for sender in senders:
                sender.join(timeout=60)
    assert code == 0 and not psutil.wait_procs(workers, timeout=30)[1]


@pytest.mark.parametrize(
    "stop", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "Ctrl-C", "hang-up"]
)
def test_one_process_stopped_by_a_signal_exits_0_as_the_workers_do(triton, model, stop) -> None:
    """uvicorn raises the signal again once it has stopped; the command still ends as a clean stop,
    not a death by SIGTERM (143) or an interruption (130). A hang-up (its terminal closed) stops
    it the same way: by SIGHUP's default action it died at once, its requests cut off."""

    port = free_port()
    argv = [sys.executable, "-m", "ftprefix.cli", "openai", "--url", triton.grpc_url]
    argv += ["--tokenizer", str(model["hf"]), "--base-model", BASE, "--port", str(port)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=signals_as_in_a_terminal
    )
    try:
        _wait_until_listening(f"http://127.0.0.1:{port}", proc)
        proc.send_signal(stop)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (code, proc.stderr.read() if proc.stderr else "") == (0, "")


def test_the_printed_address_reaches_a_gateway_on_ipv6(triton, model) -> None:
    """`--host ::1`: the URL it prints is one a client can use (the address in brackets)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"this machine has no IPv6 loopback ({exc.strerror})")
    port = free_port("::1")
    argv = [sys.executable, "-m", "ftprefix.cli", "openai", "--url", triton.grpc_url, "--host", "::1"]
    argv += ["--tokenizer", str(model["hf"]), "--base-model", BASE, "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = re.search(r"(http://\S+)/v1 in front of", proc.stdout.readline())[1]
        assert url == f"http://[::1]:{port}"
        _wait_until_listening(url, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_one_process_on_any_free_port_says_which_and_when_it_listens(triton, model) -> None:
    argv = [sys.executable, "-m", "ftprefix.cli", "openai", "--url", triton.grpc_url, "--port", "0"]
    argv += ["--tokenizer", str(model["hf"]), "--base-model", BASE]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=signals_as_in_a_terminal
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        printed = re.match(r"ftprefix openai: (http://127\.0\.0\.1:(\d+))/v1 in front of ", first)
        assert printed and printed.group(2) != "0", first
        for line in proc.stdout:  # ends at EOF if the gateway fails; pytest's timeout is the bound
            if line == "ftprefix openai: ready; Ctrl-C to stop\n":
                break
        assert httpx.get(printed.group(1) + "/health", timeout=30).json() == {"status": "ok"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_more_clients_at_once_than_the_soft_limit_of_open_files_are_all_answered(
    triton, model, tmp_path
) -> None:
    """Started from a shell, a process may hold 1024 files (the soft limit; the hard one is often
    500 times that), one per connection. At the limit gRPC's core aborted the whole gateway
    (`Failed to open /dev/urandom`): every request in flight was lost, the next ones refused. The
    gateway raises its soft limit as far as the hard one allows, for its workers as well: 400
    clients at once over 2 workers started with a soft limit of 128 files are all answered."""
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"k": {"tenant": "t", "tasks": "*"}}))
    proc, url, workers = _start(triton, model, keys, "--workers", "2", open_files=128)
    try:

        async def clients(count: int) -> list[int | str]:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:

                async def one(i: int) -> int | str:
                    body = {
                        "model": "smile",
                        "prompt": f"The quick brown fox {i}",
                        "max_tokens": 2,
                        "stream": i % 2 == 0,
                    }
                    try:
                        answer = await client.post(
                            f"{url}/v1/completions", json=body, headers={"authorization": "Bearer k"}
                        )
                    except httpx.HTTPError as exc:
                        return type(exc).__name__
                    return answer.status_code

                return await asyncio.gather(*(one(i) for i in range(count)))

        statuses = asyncio.run(clients(400))
        assert statuses == [200] * 400, {s: statuses.count(s) for s in set(statuses)}
        assert all(w.rlimit(psutil.RLIMIT_NOFILE)[0] > 400 for w in workers)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=60)
