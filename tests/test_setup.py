"""The README's two set-up commands: `make demo` and `make test` install what they lack, and only
that; `.ci/run` runs the README's test command exactly.

The Makefile runs in a scratch copy of the files it reads, with `make -n` (what it would run), so
nothing is installed here: a fresh machine installs every environment, a second run nothing, and a
changed pyproject.toml or requirements file exactly the environments built from it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INPUTS = ("pyproject.toml", "tests/oldest-supported.txt", "ftprefix/assets/image/triton-python-models.txt")
STAMPS = (".venv/.stamps/dev", ".venv/.stamps/triton-python-models", ".venv/.stamps/oldest")


def _readme_block(heading: str) -> str:
    """The first ```bash block after a line that starts with `heading`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    at = text.index(heading)
    match = re.search(r"```bash\n(.*?)```", text[at:], re.S)
    assert match, heading
    return match.group(1).strip()


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    command = _readme_block("Test:")
    lines = [
        line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert lines[-1] == command == "make test"
    assert _readme_block("Demo:") == "make demo"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed: the README's set-up commands need it")
    for name in ("Makefile", *INPUTS):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def _would_run(checkout: Path, target: str) -> list[str]:
    # as typed in a shell: not as a sub-make of `make test` (which runs this suite)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    argv = ["make", "--no-print-directory", "-n", target]
    done = subprocess.run(argv, cwd=checkout, capture_output=True, text=True, check=True, env=env)
    return [line for line in done.stdout.splitlines() if line.strip()]


def _installs(lines: list[str]) -> list[str]:
    """Which environments the commands install into."""
    found = []
    for line in lines:
        if "/bin/pip install" in line:  # an environment's pip, not a message naming pip
            found.append(
                "triton-python-models"
                if "--target .venv/triton-python-models" in line
                else "oldest"
                if ".venv/oldest/bin/pip" in line
                else "dev"
            )
    return found


# the suite's many Python processes read ftprefix's bytecode instead of compiling it each
COMPILE = ".venv/bin/python -m compileall -q ftprefix benchmarks tools > /dev/null"
TEST = ".venv/bin/ruff check . && .venv/bin/python -m pytest -q"


def _stamp(checkout: Path, at: float) -> None:
    """Every environment installed at time `at` (what a completed run leaves)."""
    for name in STAMPS:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).touch()
        os.utime(checkout / name, (at, at))


def test_a_fresh_machine_installs_every_environment_then_tests(checkout: Path) -> None:
    lines = _would_run(checkout, "test")
    assert _installs(lines) == ["dev", "triton-python-models", "oldest"]
    assert lines[-2:] == [COMPILE, TEST]
    assert any("pip install torch==2.13.0 -e '.[all,dev]'" in line for line in lines)
    demo = _would_run(checkout, "demo")
    assert _installs(demo) == ["dev"] and demo[-1].startswith(".venv/bin/ftprefix demo")


def test_a_second_run_installs_nothing(checkout: Path) -> None:
    inputs_time = os.stat(checkout / "pyproject.toml").st_mtime
    for name in INPUTS:
        os.utime(checkout / name, (inputs_time, inputs_time))
    _stamp(checkout, inputs_time + 10)
    assert _would_run(checkout, "test") == [COMPILE, TEST]
    assert _installs(_would_run(checkout, "demo")) == []


@pytest.mark.parametrize(
    ("changed", "reinstalled"),
    [
        ("pyproject.toml", ["dev", "oldest"]),
        ("ftprefix/assets/image/triton-python-models.txt", ["triton-python-models"]),
        ("tests/oldest-supported.txt", ["oldest"]),
    ],
)
def test_a_changed_input_reinstalls_what_it_feeds(
    checkout: Path, changed: str, reinstalled: list[str]
) -> None:
    base = os.stat(checkout / "pyproject.toml").st_mtime
    for name in INPUTS:
        os.utime(checkout / name, (base, base))
    _stamp(checkout, base + 10)
    os.utime(checkout / changed, (base + 20, base + 20))
    assert _installs(_would_run(checkout, "test")) == reinstalled


@pytest.mark.parametrize("target", ["demo", "test"])
def test_a_machine_the_triton_server_does_not_run_on_is_told_so_before_any_install(
    checkout: Path, tmp_path_factory: pytest.TempPathFactory, target: str
) -> None:
    """nvidia-pytriton ships the Triton server for Linux alone: elsewhere (macOS, say) the first
    command failed deep in pip, after minutes of installing, with no word of why."""
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "uname").write_text('#!/bin/sh\ncase "$1" in -s) echo Darwin;; *) echo arm64;; esac\n')
    (bin_dir / "uname").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        ["make", "--no-print-directory", target], cwd=checkout, capture_output=True, text=True, env=env
    )
    assert done.returncode == 2
    said = done.stderr.splitlines()[0]
    assert said.startswith("make demo and make test need Linux") and "not Darwin" in said
    assert "pip install 'ftprefix[convert,openai]'" in said and done.stdout == ""
    assert not (checkout / ".venv").exists()
