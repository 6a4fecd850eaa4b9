"""Shared helpers for the deployment tests (no tests here): a compose file as docker compose reads
it, checked against the Compose Specification's schema, a Dockerfile's COPY sources, and a wheel
installed as the images install it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from dotenv import dotenv_values

from ftprefix.serving import cpus

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT.parent / "shared" / "compose-spec" / "compose-spec.json"
_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
# tritonserver's --exit-timeout-secs when not given (triton-inference-server/core, src/server.cc:
# exit_timeout_secs_ = 30), as the GPU image starts it
TRITON_EXIT_TIMEOUT_S = 30
# ftprefix serve's longest stop with the engine instances it picks itself: Triton's exit timeout
# as EmbeddedServer.exit_timeout_s sets it, 10 s + 2 s per model (four) and per instance
LONGEST_CPU_STOP_S = 10 + 2 * (4 + cpus.MAX_DEFAULT_INSTANCES)


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error} and $$."""

    def one(match: re.Match) -> str:
        name, kind, rest = match.groups()
        value = env.get(name)
        unset = value is None or (kind is not None and kind.startswith(":") and value == "")
        if not unset:
            return value
        if kind and kind.endswith("?"):
            raise KeyError(f"{name} is required: {rest}")
        return rest if kind else ""

    return _VAR.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def compose_schema() -> jsonschema.Draft7Validator:
    """The spec's validator, or a skip that says why (../shared is absent; CI always has it)."""
    if not SPEC.is_file():
        pytest.skip(f"{SPEC} is absent: the Compose Specification's schema lives in ../shared (CI has it)")
    return jsonschema.Draft7Validator(json.loads(SPEC.read_text(encoding="utf-8")))


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


def compose(
    directory: Path,
    schema: jsonschema.Draft7Validator,
    file: str = "compose.yaml",
    profiles: tuple[str, ...] = (),
    environment: dict[str, str] | None = None,
) -> dict:
    """What `docker compose [-f FILE] [--profile P] config` shows in `directory`: valid against the
    spec, with the services the profiles enable."""
    env = {k: v for k, v in dotenv_values(directory / ".env").items() if v is not None}
    env.update(environment or {})
    doc = yaml.safe_load(_interpolate((directory / file).read_text(encoding="utf-8"), env))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in schema.iter_errors(doc)]
    assert errors == [], errors
    if _compose_plugin():
        argv = ["docker", "compose", "-f", file, *(a for p in profiles for a in ("--profile", p)), "config"]
        done = subprocess.run(argv, cwd=directory, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
    doc["services"] = {
        name: service
        for name, service in doc["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }
    return doc


def bind(service: dict, target: str) -> dict:
    (volume,) = [v for v in service["volumes"] if v["target"] == target]
    assert volume["type"] == "bind"
    return volume


def dockerfile_instructions(dockerfile: Path) -> list[str]:
    text = dockerfile.read_text(encoding="utf-8").replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def missing_copy_sources(context: Path, dockerfile: str) -> list[str]:
    """What the Dockerfile COPYs or ADDs that the build context lacks (it must COPY something)."""
    copies = [
        line.split()[1:]
        for line in dockerfile_instructions(context / dockerfile)
        if line.split()[0] in ("COPY", "ADD")
    ]
    assert copies, f"{dockerfile} copies nothing"
    sources = [a for args in copies for a in args[:-1] if not a.startswith("--")]
    return [s for s in sources if not list(context.glob(s.rstrip("/")))]


def install_like_the_image(wheel: Path, target: Path) -> None:
    """`pip install --no-deps` of a deployment's wheel, as its Dockerfiles do, into `target`
    (offline: the wheel alone)."""
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target"]
    subprocess.run([*pip, str(target), str(wheel)], check=True, capture_output=True, timeout=300)
