"""docker/docker-compose.yml: `docker compose config` where the compose plugin exists, and always the
fields the GPU deployment depends on (parsed YAML)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "docker" / "docker-compose.yml"
BACKEND_GIT = "https://github.com/triton-inference-server/fastertransformer_backend.git"


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


def test_compose_file_declares_the_gpu_server():
    if _compose_plugin():
        env = {
            "FTPREFIX_MODEL_DIR": "/tmp/model",
            "FTPREFIX_TRITON_REPO": "/tmp/repo",
            "PATH": "/usr/bin:/bin",
        }
        done = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    spec = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    triton = spec["services"]["triton"]
    context, _, commit = triton["build"]["context"].partition("#")
    assert context == BACKEND_GIT and re.fullmatch(r"[0-9a-f]{40}", commit)
    assert triton["build"]["dockerfile"] == "docker/Dockerfile"
    assert "profiles" not in triton  # `docker compose up` starts the GPU server
    assert {p.split(":")[0] for p in triton["ports"]} == {"8000", "8001", "8002"}
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert triton["shm_size"]
    command = " ".join(triton["command"])
    assert "--model-control-mode=explicit" in command  # hot reload through model control
    mounts = {v.rsplit(":", 2)[1] for v in triton["volumes"]}
    # triton-repo writes model_checkpoint_path under /ftprefix/model by default
    assert mounts == {"/ftprefix/model", "/ftprefix/triton_models"}
    assert "--model-repository=/ftprefix/triton_models" in command

    cpu = spec["services"]["cpu"]
    assert cpu["profiles"] == ["cpu"]
    assert "ftprefix serve" in " ".join(cpu["command"])
    dockerfile = COMPOSE.parent / cpu["build"]["dockerfile"].removeprefix("docker/")
    assert dockerfile.is_file() and "python:3.11" in dockerfile.read_text(encoding="utf-8")


def test_default_checkpoint_path_is_the_compose_mount():
    from ftprefix.commands.triton_repo import DEFAULT_CONTAINER_MODEL_ROOT

    spec = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert any(
        v.rsplit(":", 2)[1] == DEFAULT_CONTAINER_MODEL_ROOT for v in spec["services"]["triton"]["volumes"]
    )
