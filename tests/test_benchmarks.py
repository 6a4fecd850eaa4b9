"""The README's benchmark commands run and print their side-by-side tables (tiny sizes here).

Figures are not asserted: wall-clock numbers belong in the README, not in pass/fail. Most of these
runs assert nothing that another process beside them could change, and spend much of their time
starting processes and servers: they are marked `background` and run beside the rest of the suite
from its start (background.py). The one that asserts a count within a time (wake-ups) runs in the
test itself.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from background import SCRATCH, Finished

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _command(script: str, *args: str) -> list[str]:
    return [sys.executable, str(BENCHMARKS / script), *args]


def _output(proc: subprocess.CompletedProcess[str] | Finished) -> str:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _run(script: str, *args: str) -> str:
    return _output(subprocess.run(_command(script, *args), capture_output=True, text=True, timeout=300))


def _number(row: str, column: int) -> float:
    cell = row.strip().strip("|").split("|")[column]
    return float(re.search(r"[-+]?\d+(\.\d+)?", cell).group())  # type: ignore[union-attr]


# its per-token figures are printed, not asserted: only rates and which rows, which load beside it
# does not change
@pytest.mark.background(
    *_command("openai_gateway.py", "--requests", "8", "--new-tokens", "2", "--stream-tokens", "2", "6"),
    *("--workers", "2"),
)
def test_openai_gateway_benchmark_compares_with_the_client(background_run: Finished):
    out = _output(background_run)
    rows = {
        via: [line for line in out.splitlines() if re.match(rf"\| (1|8|32) \| this, {via} \|", line)]
        for via in ("HTTP", "gRPC", "HTTP, 2 workers")
    }
    # whole answers first, then streams, whose last column is the CPU per streamed token
    for via, lines in rows.items():
        whole, streams = lines[:3], lines[3:]
        assert [int(_number(r, 0)) for r in whole] == [1, 8, 32] == [int(_number(r, 0)) for r in streams], via
        assert all(_number(r, 2) > 0 and _number(r, 3) > 0 for r in lines)
        assert not any(r.rstrip().endswith("us |") for r in whole)
        assert all(r.rstrip().endswith("us |") for r in streams)
    work = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert _number(work["all of it, one request"], 1) > 0
    assert _number(work["key lookup (1,000 keys, the keys file checked for changes)"], 1) > 0


def test_wakeups_benchmark_measures_the_echo_server_and_idle_uvicorn():
    out = _run("wakeups.py", "--gaps", "0", "5", "--seconds", "0.3")
    rows = [line for line in out.splitlines() if re.match(r"\| \d+ ms \|", line)]
    assert [_number(r, 0) for r in rows] == [0, 5]
    assert all(_number(r, 1) >= 50 and _number(r, 2) > 0 for r in rows)  # round trips, CPU per trip
    idle = [
        line for line in out.splitlines() if line.startswith("| uvicorn") or line.startswith("| the gateway")
    ]
    assert len(idle) == 2 and all(_number(line, 1) > 0 for line in idle)


# a figure per token is the difference of two CPU measurements, which other work beside it can
# push to 0 or below: the test reads that each one is there, not its sign
@pytest.mark.background(
    *_command("stream_floor.py", "--streams", "1", "--requests", "8", "--tokens", "2", "34", "--rounds", "1")
)
def test_stream_floor_benchmark_compares_the_gateway_with_two_relays(background_run: Finished):
    out = _output(background_run)
    rows = [line for line in out.splitlines() if re.match(r"\| \d+ \| ", line)]
    assert [int(_number(r, 0)) for r in rows] == [1]
    # the gateway, the text relay, the bare relay, and the gateway above each: CPU per token
    cells = [[cell.strip() for cell in r.strip().strip("|").split("|")[1:]] for r in rows]
    assert all(len(c) == 5 and all(re.fullmatch(r"-?\d+ us", x) for x in c) for c in cells), rows


@pytest.mark.background(
    *_command("convert.py", "--layers", "2", "--hidden", "64", "--vocab", "512", "--repeat", "1"),
    *("--workdir", SCRATCH),
)
def test_convert_benchmark_compares_with_cp(background_run: Finished):
    out = _output(background_run)
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"seconds", "peak RSS", "bytes read+written"} <= rows.keys()
    # both sides read the same source; convert writes about as many bytes as it reads
    assert _number(rows["bytes read+written"], 3) == pytest.approx(1.0, abs=0.2)
    assert (
        background_run.scratch is not None and list(background_run.scratch.iterdir()) == []
    )  # scratch space removed


@pytest.mark.background(
    *_command("serve_memory.py", "--hidden", "64", "--layers", "1", "--vocab", "512", "--instances", "2"),
    *("--workdir", SCRATCH),
)
def test_serve_memory_benchmark_compares_shared_and_own_weights(background_run: Finished):
    out = _output(background_run)
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"mapped from one copy", "read by each instance"} <= rows.keys()
    for way in ("mapped from one copy", "read by each instance"):
        assert all(_number(rows[way], column) > 0 for column in (1, 2, 3, 4))
    assert re.search(r"while a task is added: \d+\.\d\dx", out)
    assert background_run.scratch is not None and list(background_run.scratch.iterdir()) == []


@pytest.mark.background(
    *_command("engine.py", "--hidden", "64", "--heads", "4", "--layers", "1", "--vocab", "256"),
    *("--tasks", "4", "--new-tokens", "4", "--threads", "1"),
)
def test_engine_benchmark_reports_batched_and_sequential_rates(background_run: Finished):
    out = _output(background_run)
    for label in ("engine, batch 1", "engine, batch 4 (4 different tasks)", "HF generate + prefix, 4 tasks"):
        assert label in out
    assert re.search(r"mixed-task batch vs per-task sequential HF: \d+(\.\d+)?x", out)


@pytest.mark.background(
    *_command("client.py", "--requests", "8", "--overhead-calls", "3", "--new-tokens", "2"),
    *("--stream-tokens", "4"),
)
def test_client_benchmark_reports_overhead_and_throughput(background_run: Finished):
    out = _output(background_run)
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert any("overhead of Client.generate" in r for r in rows)
    in_flight = [r for r in rows if re.match(r"\| (1|8|32) \| (gRPC|HTTP) \|", r)]
    assert [(int(_number(r, 0)), r.split("|")[2].strip()) for r in in_flight] == [
        (c, via) for c in (1, 8, 32) for via in ("gRPC", "HTTP")
    ]
    assert all(_number(r, 2) > 0 and _number(r, 5) > 0 for r in in_flight)  # requests/s, CPU per request
    bare = [r for r in rows if re.match(r"\| (1|8|32) \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", r)]
    assert [int(_number(r, 0)) for r in bare] == [1, 8, 32, 1, 8, 32]  # calls, then streams
    assert all(_number(r, 1) > 0 and _number(r, 2) > 0 for r in bare)


@pytest.mark.background(
    *_command("noisy_neighbour.py", "--flood", "6", "--samples", "2", "--short", "2", "--long", "4"),
    *("--hidden", "64", "--layers", "1", "--settle", "0.3", "--share-seconds", "0.5"),
)
def test_noisy_neighbour_benchmark_compares_admission_policies(background_run: Finished):
    out = _output(background_run)
    rows = {
        line.split("|")[1].strip(): line
        for line in out.splitlines()
        if line.startswith("| --") or "default" in line
    }
    assert {"--max-in-flight 1, fair", "--max-in-flight 1, fifo"} <= rows.keys()
    assert all(_number(row, 1) > 0 and _number(row, 2) > 0 for row in rows.values())
    shares = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| f")}
    assert shares.keys() == {"fair, weights 1 and 1", "fair, B of weight 3", "fifo"}
    # answers were counted; not by each tenant: in half a second on a busy machine (3 answers, say)
    # A's one turn in four under B's weight 3 may not come round (A 0.0, B 5.8 answers/s, seen)
    assert all(_number(row, 1) + _number(row, 2) > 0 for row in shares.values())


@pytest.mark.background(*_command("fuzz_openai.py", "--max-examples", "2", "--phases", "fuzzing"))
def test_fuzz_benchmark_sends_every_kind_of_input_and_reports_no_server_error(background_run: Finished):
    out = _output(background_run)
    kinds = {line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")}
    assert {"lone surrogate", "NUL", "1 MB string", "nested 100000 deep"} <= kinds
    assert "schemathesis, up to 2 examples per operation: exit 0" in out
    assert "5xx answers to the handmade inputs: 0" in out


@pytest.mark.background(
    *_command("cpu_server.py", "--requests", "6", "--rounds", "1", "--in-flight", "2", "--max-seconds", "20"),
    *("--hidden", "64", "--layers", "1"),
)
def test_cpu_server_benchmark_compares_layouts_alone_and_beside_a_busy_process(background_run: Finished):
    out = _output(background_run)
    rows = [line for line in out.splitlines() if line.startswith("| now")]
    names = {row.split("|")[1].strip() for row in rows}
    assert "now: default (an instance per core, 1 thread each)" in names
    assert any("OMP_WAIT_POLICY=ACTIVE" in name for name in names)
    assert all(_number(row, 2) > 0 and _number(row, 3) > 0 for row in rows)
    assert "2 in flight, default: busy / alone" in out


@pytest.mark.parametrize(
    "tokenizer",
    [
        pytest.param(
            name,
            marks=pytest.mark.background(
                *_command("streamed_text.py", "--prompts", "20", "400", "--generated", "80", "--rounds", "1"),
                *flags,
            ),
        )
        for name, flags in (("sentencepiece", ()), ("byte-level", ("--byte-level",)))
    ],
)
def test_streamed_text_benchmark_compares_with_decoding_whole_every_token(
    background_run: Finished, tokenizer: str
):
    out = _output(background_run)
    rows = {_number(line, 0): line for line in out.splitlines() if re.match(r"\| \d", line)}
    assert set(rows) == {20, 400}
    assert all(_number(row, 1) > 0 and _number(row, 2) > 0 for row in rows.values())


@pytest.mark.background(
    *_command("torch_waits.py", "--steps", "1", "--rounds", "1", "--cap", "200"),
    # the two settings the table compares first; the pool with torch's default policy is a third
    # row of the same kind
    *("--settings", "one-thread", "passive"),
)
def test_torch_waits_benchmark_compares_one_thread_with_the_pool_alone_and_beside_a_busy_process(
    background_run: Finished,
):
    out = _output(background_run)
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    del rows["setting"]
    assert rows.keys() == {
        "now: one thread (OMP_WAIT_POLICY=PASSIVE)",
        "before: torch's pool, OMP_WAIT_POLICY=PASSIVE",
    }
    assert all(_number(row, 1) > 0 and _number(row, 2) > 0 for row in rows.values())
