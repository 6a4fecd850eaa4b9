"""docker/: the GPU image (FasterTransformer pinned, the streaming patch applied exactly, SM 90) and
the compose files, as their documented commands use them. No Docker engine or GPU here: the
compose plugin validates the files where it exists; the YAML is checked field by field always."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from tritonclient.grpc import model_config_pb2 as mc

from ftprefix.cli import main
from ftprefix.serving.interface import parse_pbtxt
from tools.regenerate_triton_models import example_conversion

DOCKER = Path(__file__).resolve().parent.parent / "docker"
GPU_COMPOSE = DOCKER / "docker-compose.yml"
CPU_COMPOSE = DOCKER / "docker-compose.cpu.yml"
DOCKERFILE = DOCKER / "Dockerfile.gpu"
PATCH = DOCKER / "patches" / "gptneox-streaming-lengths.patch"
STREAMING_BRANCH = "if (token_generated_cb_ && step + 1 < (int)max_output_seq_len) {"
_VAR = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error}; a required variable missing is an error."""

    def one(match: re.Match) -> str:
        name, kind, rest = match.groups()
        if name in env and env[name] != "":
            return env[name]
        if kind == "?":
            raise KeyError(f"{name} is required: {rest}")
        return rest if kind == "-" else ""

    return _VAR.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


def _config(compose: Path, env: dict[str, str], env_file: Path | None = None) -> dict:
    """The compose file as `docker compose config` sees it for a documented command."""
    if _compose_plugin():
        argv = ["docker", "compose", *(["--env-file", str(env_file)] if env_file else []), "-f", str(compose)]
        done = subprocess.run(
            [*argv, "config"],
            capture_output=True,
            text=True,
            env={**env, "PATH": "/usr/bin:/bin"},
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    if env_file is not None:
        env = {**dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line), **env}
    return yaml.safe_load(_interpolate(compose.read_text(encoding="utf-8"), env))


@pytest.fixture
def gpu_repository(tmp_path: Path) -> Path:
    """`ftprefix triton-repo` for a tp 2 conversion with 2 model instances, as the README runs it."""
    example_conversion(tmp_path / "converted", tp=2)
    assert (
        main(
            ["triton-repo", str(tmp_path / "converted"), "--out", str(tmp_path / "repo"), "--instances", "2"]
        )
        == 0
    )
    return tmp_path / "repo"


def test_the_documented_gpu_command_reserves_instances_times_tp_gpus(gpu_repository: Path) -> None:
    spec = _config(GPU_COMPOSE, {}, env_file=gpu_repository / "compose.env")
    triton = spec["services"]["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 4, "capabilities": ["gpu"]}]  # 2 instances x tp 2
    ft = parse_pbtxt((gpu_repository / "fastertransformer" / "config.pbtxt").read_text())
    assert [(g.count, g.kind) for g in ft.instance_group] == [(2, mc.ModelInstanceGroup.KIND_CPU)]
    mounts = {v.rsplit(":", 2)[1]: v.split(":")[0] for v in triton["volumes"]}
    assert mounts["/ftprefix/triton_models"] == str(gpu_repository.resolve())
    assert mounts["/ftprefix/mount"] == str((gpu_repository.parent / "converted").resolve())
    assert triton["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.gpu"}
    # Triton on loopback only: past the gateway's keys, nothing reaches it from the network
    assert sorted(triton["ports"]) == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002"]
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    with pytest.raises(KeyError, match="FTPREFIX_MODEL_DIR"):
        _config(GPU_COMPOSE, {"FTPREFIX_TRITON_REPO": "/tmp/repo"})  # required variables say so


def test_the_documented_cpu_command_needs_only_the_model_directory() -> None:
    spec = _config(CPU_COMPOSE, {"FTPREFIX_MODEL_DIR": "/tmp/converted"})
    cpu = spec["services"]["cpu"]
    assert "ftprefix serve /ftprefix/model" in " ".join(cpu["command"])
    assert cpu["volumes"][0] == "/tmp/converted:/ftprefix/model"
    assert (DOCKER / cpu["build"]["dockerfile"].removeprefix("docker/")).is_file()
    assert "[serve,openai]" in (DOCKER / "Dockerfile.cpu").read_text()


def test_impossible_instance_counts_and_batching_windows_are_refused_in_one_line(
    tmp_path: Path, capsys
) -> None:
    example_conversion(tmp_path / "converted", tp=1)
    for extra, message in (
        (["--instances", "0"], "at least 1"),
        (["--instances", "2", "--target", "cpu"], "GPU"),
        (["--max-queue-delay-us", "-5"], "between 0 and"),
    ):
        assert main(["triton-repo", str(tmp_path / "converted"), "--out", str(tmp_path / "r"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
        assert not (tmp_path / "r").exists()


def test_streaming_repositories_say_they_need_this_image(tmp_path: Path, capsys) -> None:
    example_conversion(tmp_path / "converted", tp=1)
    assert (
        main(["triton-repo", str(tmp_path / "converted"), "--out", str(tmp_path / "r"), "--streaming"]) == 0
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "docker/" in err and "#704" in err


# -- the GPU image ----------------------------------------------------------------------------------


def _dockerfile_lines() -> list[str]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    return [line for line in text.replace("\\\n", " ").splitlines() if not line.lstrip().startswith("#")]


def test_fastertransformer_is_pinned_and_patched_before_the_build() -> None:
    lines = _dockerfile_lines()
    text = "\n".join(lines)
    assert re.search(r"^ARG FT_COMMIT=[0-9a-f]{40}$", text, re.M)
    assert re.search(r"^ARG FT_BACKEND_COMMIT=[0-9a-f]{40}$", text, re.M)
    assert not re.search(r"\bmain\b", text)  # nothing fetched from a moving branch
    assert re.search(r"FROM nvcr.io/nvidia/tritonserver:\$\{TRITON_VERSION\}-py3", text)
    assert "ARG TRITON_VERSION=23.05" in text
    apply = next(i for i, line in enumerate(lines) if " apply " in line)
    build = next(i for i, line in enumerate(lines) if "cmake" in line and "FT_DIR=" in line)
    assert apply < build
    assert "git -C FasterTransformer apply" in lines[apply] and "--3way" not in lines[apply]
    assert "--reject" not in lines[apply] and "|| exit 1" in lines[apply]
    sm = re.search(r"^ARG SM=(\S+)$", text, re.M)
    assert sm is not None and "90" in sm.group(1).split(";") and '-D "SM=${SM}"' in lines[build]
    assert "COPY docker/patches/" in text


def test_the_patch_changes_only_the_gptneox_streaming_branch() -> None:
    lines = PATCH.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "--- a/src/fastertransformer/models/gptneox/GptNeoX.cc"
    assert lines[1] == "+++ b/src/fastertransformer/models/gptneox/GptNeoX.cc"
    assert sum(line.startswith("+++ ") for line in lines) == 1  # one file only
    hunks: list[list[str]] = []
    for line in lines[2:]:
        if line.startswith("@@"):
            hunks.append([])
        else:
            hunks[-1].append(line)
    assert hunks
    for hunk in hunks:
        old = [line[1:] for line in hunk if line[:1] in (" ", "-")]
        new = [line[1:] for line in hunk if line[:1] in (" ", "+")]
        assert not any(line.startswith("-") for line in hunk)  # adds only
        start = next(i for i, line in enumerate(new) if line.strip() == STREAMING_BRANCH)
        end = next(i for i, line in enumerate(new) if i > start and line == "        }")
        added = [i for i, line in enumerate(hunk_new_flags(hunk)) if line]
        assert added and all(start < i < end for i in added)  # inside the streaming branch
        assert any("sequence_lengths_" in line for line in new[start:end]) and old  # keeps the lengths


def hunk_new_flags(hunk: list[str]) -> list[bool]:
    """For each line of the hunk's new side: whether the patch adds it."""
    return [line.startswith("+") for line in hunk if line[:1] in (" ", "+")]


@pytest.mark.parametrize(("compose", "server"), [(GPU_COMPOSE, "triton"), (CPU_COMPOSE, "cpu")])
def test_an_openai_service_sits_next_to_each_server(compose: Path, server: str, tmp_path: Path) -> None:
    env = {"FTPREFIX_MODEL_DIR": "/tmp/converted", "FTPREFIX_TRITON_REPO": "/tmp/repo"}
    spec = _config(compose, env)  # the server alone: the openai profile needs no variable of its own
    api = spec["services"]["openai"]
    assert api["profiles"] == ["openai"] and "profiles" not in spec["services"][server]
    command = " ".join(str(part) for part in api["command"])
    assert f"ftprefix openai --url {server}:8001 --tokenizer /ftprefix/tokenizer" in command
    assert "--base-model base" in command and api["ports"] == ["8080:8080"]
    assert api["depends_on"] == {server: {"condition": "service_healthy"}}
    assert "/health" in " ".join(api["healthcheck"]["test"])
    assert "--newline-token=" in api["command"]  # empty: off
    with_tokenizer = _config(
        compose,
        {
            **env,
            "FTPREFIX_TOKENIZER_DIR": "/tmp/hf",
            "FTPREFIX_BASE_MODEL": "neox",
            "FTPREFIX_NEWLINE_TOKEN": "<NL>",
        },
    )
    api = with_tokenizer["services"]["openai"]
    assert api["volumes"] == ["/tmp/hf:/ftprefix/tokenizer:ro"] and "neox" in api["command"]
    assert "--newline-token=<NL>" in api["command"]
    assert api["environment"]["FTPREFIX_API_KEY"] == ""  # unset: open, as the start-up line says
    with_key = _config(compose, {**env, "FTPREFIX_API_KEY": "k3y"})
    assert with_key["services"]["openai"]["environment"]["FTPREFIX_API_KEY"] == "k3y"
    assert all(p.startswith("127.0.0.1:") for p in with_key["services"][server]["ports"])
    if server == "cpu":  # the shell gets the token from the environment, quoted, never as shell text
        cpu = with_tokenizer["services"]["cpu"]
        assert cpu["environment"]["FTPREFIX_NEWLINE_TOKEN"] == "<NL>"
        assert '--newline-token="$FTPREFIX_NEWLINE_TOKEN"' in " ".join(cpu["command"])


def test_triton_repo_writes_the_openai_variables_with_a_tokenizer(tmp_path: Path) -> None:
    from ftprefix.demo.toy import build_tokenizer

    example_conversion(tmp_path / "converted", tp=1)
    build_tokenizer(tmp_path / "hf")
    argv = [
        "triton-repo",
        str(tmp_path / "converted"),
        "--out",
        str(tmp_path / "r"),
        "--tokenizer",
        str(tmp_path / "hf"),
    ]
    assert main(argv) == 0
    env = dict(line.split("=", 1) for line in (tmp_path / "r" / "compose.env").read_text().splitlines())
    assert env["FTPREFIX_TOKENIZER_DIR"] == str((tmp_path / "hf").resolve())
    assert env["FTPREFIX_BASE_MODEL"] == "example" and env["FTPREFIX_GPUS"] == "1"
    assert "FTPREFIX_NEWLINE_TOKEN" not in env
    assert main([*argv, "--newline-token", "<NL>"]) == 0
    env = dict(line.split("=", 1) for line in (tmp_path / "r" / "compose.env").read_text().splitlines())
    assert env["FTPREFIX_NEWLINE_TOKEN"] == "<NL>"
    pre = (tmp_path / "r" / "preprocessing" / "config.pbtxt").read_text()
    assert 'key: "newline_token"' in pre and 'string_value: "<NL>"' in pre
