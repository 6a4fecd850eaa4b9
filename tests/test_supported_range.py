"""The supported Hugging Face stack, tested at both ends: the newest in this environment (the whole
suite), the oldest in .venv/oldest (what tests/oldest-supported.txt pins, which the README's
install command installs): there the converter, verify, reference engine and tokenizer tests run
again, among them verify against PEFT's own forward."""

from __future__ import annotations

import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from background import Finished
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
OLDEST = REPO / ".venv" / "oldest"
PINS = REPO / "tests" / "oldest-supported.txt"
SHORT_JOB = [
    "tests/test_convert.py",
    "tests/test_convert_errors.py",
    "tests/test_checkpoints.py",
    "tests/test_convert_soft_prompt.py",
    "tests/test_verify.py",
    "tests/test_engine.py",
    "tests/test_tokenizers.py",
    "tests/test_tokenizers_hf_fixtures.py",
]


def _pins() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in PINS.read_text(encoding="utf-8").splitlines()]
    return dict(line.split("==") for line in lines if line)


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    return {req.name: req for req in map(Requirement, lines) if not req.name.startswith("ftprefix")}


def test_pyproject_states_the_tested_range() -> None:
    requirements = _requirements()
    for name, oldest in _pins().items():
        spec = requirements[name].specifier
        lower = next(s.version for s in spec if s.operator == ">=")
        assert Version(lower) == Version(oldest), (
            f"{name}: pyproject says >={lower}, the oldest tested is {oldest}"
        )
        assert Version(metadata.version(name)) in spec  # the newest tested, here, is inside the range
    # transformers and PEFT are capped at the newest tested: a newer release may move under verify
    assert any(s.operator == "<" for s in requirements["transformers"].specifier)


def test_the_oldest_supported_stack_is_installed_as_pinned() -> None:
    python = OLDEST / "bin" / "python"
    assert python.is_file(), f"{OLDEST} is missing: the README's install command creates it"
    versions = subprocess.run(
        [python, "-c", "from importlib import metadata as m; import sys; "
         "print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))", *_pins()],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert versions == [f"{n}=={v}" for n, v in _pins().items()]


@pytest.mark.background(
    *(OLDEST / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *SHORT_JOB),
    cwd=REPO,
    env={"PYTHONDONTWRITEBYTECODE": "1"},
)
def test_the_oldest_supported_stack_passes_the_short_job(background_run: Finished) -> None:
    run = background_run
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-2000:]
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary and "error" not in summary
