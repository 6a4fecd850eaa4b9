"""`ftprefix triton-repo CONVERTED --out DIR`: the deployment directory `cd DIR && docker compose up`
serves, as docker compose reads it.

No Docker engine here, so each compose file is read the way compose reads it: its `.env` parsed by
python-dotenv (not by ftprefix), variables interpolated with compose's rules, profiles applied,
and the result validated against the Compose Specification's own JSON schema (../shared/
compose-spec, the schema Docker Compose validates with); where a `docker compose` plugin is
installed, its `config` must accept the directory too. The GPU image's build context is checked
file by file against what its Dockerfiles COPY, and its wheel is installed and imported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from deployment_support import (
    LONGEST_CPU_STOP_S,
    TRITON_EXIT_TIMEOUT_S,
    bind,
    compose,
    compose_schema,
    dockerfile_instructions,
    install_like_the_image,
    missing_copy_sources,
)
from dotenv import dotenv_values
from serving_support import HIDDEN, LAYERS, add_task, make_converted, wait_until_open
from tritonclient.grpc import model_config_pb2 as mc

import ftprefix
from ftprefix import assets, layout, locking
from ftprefix.cli import build_parser, main
from ftprefix.demo.toy import build_tokenizer, random_prefix
from ftprefix.serving.interface import parse_pbtxt
from tools.regenerate_triton_models import example_conversion

STREAMING_BRANCH = "if (token_generated_cb_ && step + 1 < (int)max_output_seq_len) {"


@pytest.fixture(scope="module")
def schema() -> jsonschema.Draft7Validator:
    return compose_schema()


@pytest.fixture
def tokenizer(tmp_path: Path) -> Path:
    build_tokenizer(tmp_path / "hf")
    return tmp_path / "hf"


@pytest.fixture
def gpu_deployment(tmp_path: Path, tokenizer: Path) -> Path:
    """The README's GPU path for a tp 2 conversion with 2 model instances."""
    example_conversion(tmp_path / "converted", tp=2)
    argv = ["triton-repo", str(tmp_path / "converted"), "--out", str(tmp_path / "deploy")]
    assert main([*argv, "--tokenizer", str(tokenizer), "--instances", "2"]) == 0
    return tmp_path / "deploy"


def test_docker_compose_up_starts_triton_on_instances_times_tp_gpus(gpu_deployment: Path, schema) -> None:
    spec = compose(gpu_deployment, schema)
    assert set(spec["services"]) == {"triton"}  # the gateway only with --profile openai
    triton = spec["services"]["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 4, "capabilities": ["gpu"]}]  # 2 instances x tp 2
    ft = parse_pbtxt((gpu_deployment / "model_repository/fastertransformer/config.pbtxt").read_text())
    assert [(g.count, g.kind) for g in ft.instance_group] == [(2, mc.ModelInstanceGroup.KIND_CPU)]
    assert ft.backend == "fastertransformer"
    # Triton on loopback only: past the gateway's keys, nothing reaches it from the network
    assert sorted(triton["ports"]) == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002"]
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    model = bind(triton, "/ftprefix/mount")
    assert model["source"] == str((gpu_deployment.parent / "converted").resolve())
    assert model["read_only"] and model["bind"]["create_host_path"] is False
    repository = bind(triton, "/ftprefix/triton_models")
    assert (gpu_deployment / repository["source"] / "fastertransformer" / "config.pbtxt").is_file()
    assert (gpu_deployment / triton["build"]["context"] / triton["build"]["dockerfile"]).is_file()
    assert (
        triton["pull_policy"] == "build"
        and triton["image"] == f"ftprefix-fastertransformer:{ftprefix.__version__}"
    )


def test_the_openai_profile_adds_the_gateway_beside_triton(gpu_deployment: Path, schema) -> None:
    spec = compose(gpu_deployment, schema, profiles=("openai",))
    api = spec["services"]["openai"]
    assert api["profiles"] == ["openai"] and "profiles" not in spec["services"]["triton"]
    command = " ".join(str(part) for part in api["command"])
    assert "ftprefix openai --url triton:8001 --tokenizer /ftprefix/tokenizer --base-model example" in command
    assert "--newline-token=" in api["command"]  # empty: off
    assert (gpu_deployment / bind(api, "/ftprefix/tokenizer")["source"] / "tokenizer.json").is_file()
    assert api["depends_on"] == {"triton": {"condition": "service_healthy"}}
    assert api["ports"] == ["0.0.0.0:8080:8080"] and api["environment"]["FTPREFIX_API_KEY"] == ""
    assert (gpu_deployment / api["build"]["context"] / api["build"]["dockerfile"]).is_file()
    with_key = compose(gpu_deployment, schema, profiles=("openai",), environment={"FTPREFIX_API_KEY": "k3y"})
    assert with_key["services"]["openai"]["environment"]["FTPREFIX_API_KEY"] == "k3y"
    assert all(p.startswith("127.0.0.1:") for p in with_key["services"]["triton"]["ports"])


def test_the_same_deployment_serves_on_cpu(gpu_deployment: Path, schema) -> None:
    on_cpu = compose(gpu_deployment, schema, file="compose.cpu.yaml", profiles=("openai",))
    triton = on_cpu["services"]["triton"]
    assert triton["command"][:5] == [
        "ftprefix",
        "serve",
        "/ftprefix/model",
        "--deployment",
        "/ftprefix/deployment",
    ]
    assert "deploy" not in triton  # no GPU
    assert sorted(triton["ports"]) == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002"]
    assert bind(triton, "/ftprefix/model")["source"] == str((gpu_deployment.parent / "converted").resolve())
    assert bind(triton, "/ftprefix/deployment")["source"] == "."
    on_gpu = compose(gpu_deployment, schema, profiles=("openai",))
    # one gateway, either server; beside the CPU server its whole answers go over Triton's HTTP port
    cpu_gateway, gpu_gateway = on_cpu["services"]["openai"], on_gpu["services"]["openai"]
    command = cpu_gateway["command"]
    assert (
        command[command.index("--http-url") + 1] == "triton:8000"
        and "--http-url" not in gpu_gateway["command"]
    )
    at = command.index("--http-url")
    assert {**cpu_gateway, "command": command[:at] + command[at + 2 :]} == gpu_gateway


def _seconds(duration: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([sm])", duration).groups()  # as written in the compose files
    return int(number) * (60 if unit == "m" else 1)


def test_docker_waits_for_each_service_to_stop_on_its_own(gpu_deployment: Path, schema) -> None:
    """Docker kills a container 10 s after SIGTERM unless told otherwise: each service gets at least
    what its own stop may take, so requests in flight end the way the server ends them."""
    gateway_stop = build_parser().parse_args(["openai", "--tokenizer", "hf"]).stop_timeout
    for file, triton_stop in (
        ("compose.yaml", TRITON_EXIT_TIMEOUT_S),
        ("compose.cpu.yaml", LONGEST_CPU_STOP_S),
    ):
        services = compose(gpu_deployment, schema, file=file, profiles=("openai",))["services"]
        assert _seconds(services["openai"]["stop_grace_period"]) > gateway_stop
        assert _seconds(services["triton"]["stop_grace_period"]) > triton_stop


def test_a_cpu_deployment_serves_on_cpu_with_docker_compose_up(
    tmp_path: Path, tokenizer: Path, schema
) -> None:
    example_conversion(tmp_path / "converted", tp=1)
    argv = ["triton-repo", str(tmp_path / "converted"), "--out", str(tmp_path / "d"), "--target", "cpu"]
    assert main([*argv, "--tokenizer", str(tokenizer)]) == 0
    assert not (tmp_path / "d" / "compose.cpu.yaml").exists()
    spec = compose(tmp_path / "d", schema, profiles=("openai",))
    triton = spec["services"]["triton"]
    assert "ftprefix serve /ftprefix/model --deployment" in " ".join(triton["command"])
    assert "deploy" not in triton and all(p.startswith("127.0.0.1:") for p in triton["ports"])
    env = dotenv_values(tmp_path / "d" / ".env")
    assert "FTPREFIX_GPUS" not in env and env["FTPREFIX_IMAGE"] == f"ftprefix:{ftprefix.__version__}"
    ft = parse_pbtxt((tmp_path / "d/model_repository/fastertransformer/config.pbtxt").read_text())
    assert ft.backend == "python"


def test_a_required_variable_removed_from_env_is_named(gpu_deployment: Path, schema) -> None:
    with pytest.raises(KeyError, match="FTPREFIX_MODEL_DIR"):
        compose(gpu_deployment, schema, environment={"FTPREFIX_MODEL_DIR": ""})


# -- the images' build context ------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile.gpu", "Dockerfile.cpu"])
def test_every_file_a_dockerfile_copies_is_in_the_build_context(
    gpu_deployment: Path, dockerfile: str
) -> None:
    context = gpu_deployment / "image"
    assert missing_copy_sources(context, dockerfile) == []
    assert os.access(context / "start-triton.sh", os.X_OK)


def test_the_build_context_holds_the_shipped_files_and_this_ftprefix(
    gpu_deployment: Path, tmp_path: Path
) -> None:
    context = gpu_deployment / "image"
    for name, data in assets.walk("image").items():
        assert (context / name).read_bytes() == data, name
    (wheel,) = context.glob("ftprefix-*.whl")
    assert wheel.name == f"ftprefix-{ftprefix.__version__}-py3-none-any.whl"
    # installed as the GPU image installs it, it is this ftprefix: same version, same assets
    target = tmp_path / "site"
    install_like_the_image(wheel, target)
    code = (
        "import ftprefix, ftprefix.assets as a\n"
        "print(ftprefix.__version__, ftprefix.__file__, sorted(a.walk('')))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
    )
    assert run.returncode == 0, run.stderr
    version, location, names = run.stdout.split(" ", 2)
    assert version == ftprefix.__version__ and location.startswith(str(target))
    assert names.strip() == str(sorted(assets.walk("")))


def test_fastertransformer_is_pinned_and_patched_before_the_build(gpu_deployment: Path) -> None:
    lines = dockerfile_instructions(gpu_deployment / "image" / "Dockerfile.gpu")
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
    assert "COPY patches/ /workspace/build/patches/" in text


def test_the_patch_changes_only_the_gptneox_streaming_branch(gpu_deployment: Path) -> None:
    (patch,) = (gpu_deployment / "image" / "patches").glob("*.patch")
    lines = patch.read_text(encoding="utf-8").splitlines()
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
        added = [
            i
            for i, flag in enumerate(line.startswith("+") for line in hunk if line[:1] in (" ", "+"))
            if flag
        ]
        assert added and all(start < i < end for i in added)  # inside the streaming branch
        assert any("sequence_lengths_" in line for line in new[start:end]) and old  # keeps the lengths


def test_version_names_the_commits_the_image_pins(gpu_deployment: Path) -> None:
    dockerfile = (gpu_deployment / "image" / "Dockerfile.gpu").read_text()
    pins = dict(re.findall(r"^ARG (FT_COMMIT|FT_BACKEND_COMMIT|TRITON_VERSION)=(\S+)$", dockerfile, re.M))
    run = subprocess.run([sys.executable, "-m", "ftprefix", "--version"], capture_output=True, text=True)
    assert run.returncode == 0
    assert run.stdout.splitlines()[0] == f"ftprefix {ftprefix.__version__}"
    assert f"FasterTransformer {pins['FT_COMMIT']}" in run.stdout
    assert f"fastertransformer_backend {pins['FT_BACKEND_COMMIT']}" in run.stdout
    assert f"Triton {pins['TRITON_VERSION']}" in run.stdout


def test_start_triton_links_the_conversion_and_loads_every_model(
    gpu_deployment: Path, tmp_path: Path
) -> None:
    """image/start-triton.sh as the container runs it, its /ftprefix moved under a scratch root and
    tritonserver replaced by a script that prints its arguments."""
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    (root / "ftprefix").mkdir(parents=True)
    (root / "ftprefix" / "mount").symlink_to(gpu_deployment.parent / "converted")
    (root / "ftprefix" / "triton_models").symlink_to(gpu_deployment / "model_repository")
    bin_dir.mkdir()
    (bin_dir / "tritonserver").write_text('#!/bin/sh\necho "$@"\n')
    (bin_dir / "tritonserver").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "START_TRITON_ROOT": str(root)}
    script = gpu_deployment / "image" / "start-triton.sh"
    run = subprocess.run([str(script)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    args = run.stdout.split()
    assert "--model-repository=/ftprefix/triton_models" in args and "--model-control-mode=explicit" in args
    loads = sorted(a.removeprefix("--load-model=") for a in args if a.startswith("--load-model="))
    assert loads == ["ensemble", "fastertransformer", "postprocessing", "preprocessing"]
    assert (root / "ftprefix" / "model" / "2-gpu" / "config.ini").is_file()  # model_checkpoint_path
    # the wrong conversion mounted: one line, before Triton starts
    shutil.rmtree(root / "ftprefix" / "model")
    (root / "ftprefix" / "mount").unlink()
    example_conversion(tmp_path / "other", tp=1)
    (root / "ftprefix" / "mount").symlink_to(tmp_path / "other")
    run = subprocess.run([str(script)], capture_output=True, text=True, env=env)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "2-gpu" in run.stderr and "FTPREFIX_MODEL_DIR" in run.stderr


# -- writing again, moving, refusing ------------------------------------------------------------


def test_after_tasks_add_writing_again_updates_in_place_and_keeps_env_edits(
    tmp_path: Path, capsys, schema
) -> None:
    _model, ft_dir, _ = make_converted(tmp_path, {"alpha": 3})
    deploy = tmp_path / "deploy"
    argv = ["triton-repo", str(ft_dir.parent), "--out", str(deploy), "--tokenizer", str(tmp_path / "hf")]
    assert main(argv) == 0
    capsys.readouterr()
    env_file = deploy / ".env"
    edited = env_file.read_text().replace("FTPREFIX_API_KEY=\n", "FTPREFIX_API_KEY=s3cret-key\n")
    edited = (
        edited.replace("FTPREFIX_OPENAI_PORT=8080\n", "FTPREFIX_OPENAI_PORT=9090\n") + "# my note\nMY_OWN=1\n"
    )
    env_file.write_text(edited)
    (deploy / "api-keys.json").write_text("{}")  # the user's own file beside ftprefix's
    add_task(ft_dir, "beta", random_prefix(4, LAYERS, HIDDEN, seed=99).numpy())
    capsys.readouterr()

    assert main([*argv, "--instances", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"updated {deploy}")
    assert (
        "model_repository/fastertransformer/config.pbtxt" in out
        and "model_repository/ensemble/config.pbtxt" in out
    )
    assert ".env: FTPREFIX_GPUS '1' -> '2'" in out
    assert "kept your FTPREFIX_OPENAI_PORT='9090'" in out and "kept your FTPREFIX_API_KEY" in out
    assert "s3cret" not in out  # a key is never printed
    assert "fastertransformer/load" in out  # how a running server picks the new task up
    env = dotenv_values(env_file)
    assert (env["FTPREFIX_API_KEY"], env["FTPREFIX_OPENAI_PORT"], env["MY_OWN"]) == (
        "s3cret-key",
        "9090",
        "1",
    )
    assert env["FTPREFIX_GPUS"] == "2" and "# my note" in env_file.read_text()
    assert (deploy / "api-keys.json").read_text() == "{}"
    table = parse_pbtxt((deploy / "model_repository/fastertransformer/config.pbtxt").read_text())
    assert '"beta"' in table.parameters["prompt_learning_tasks"].string_value
    spec = compose(deploy, schema, profiles=("openai",))
    assert spec["services"]["openai"]["ports"] == ["0.0.0.0:9090:8080"]
    assert "with the OpenAI API on port 9090: add --profile openai" in out  # the port compose publishes
    # nothing to do the third time
    assert main([*argv, "--instances", "2"]) == 0
    assert "0 file(s) changed" in capsys.readouterr().out


def test_written_again_with_no_options_it_keeps_the_settings_it_was_written_with(
    tmp_path: Path, capsys, schema
) -> None:
    """After `tasks add`, `triton-repo CONVERTED --out DIR` alone used to rewrite DIR with the
    defaults: its text models, tokenizer and OpenAI API removed, its GPUs back to one. And
    `triton-repo --out DIR` takes the conversion DIR serves."""
    _model, ft_dir, _ = make_converted(tmp_path, {"alpha": 3})
    deploy, fresh = tmp_path / "deploy", tmp_path / "fresh"
    base = ["triton-repo", str(ft_dir.parent), "--out"]
    options = ["--tokenizer", str(tmp_path / "hf"), "--instances", "2", "--newline-token", "<NL>"]
    options += ["--max-queue-delay-us", "7000"]
    assert main([*base, str(deploy), *options]) == 0
    add_task(ft_dir, "beta", random_prefix(4, LAYERS, HIDDEN, seed=99).numpy())
    capsys.readouterr()

    assert main(["triton-repo", "--out", str(deploy)]) == 0
    out = capsys.readouterr().out
    assert (
        "settings as before: --instances 2, --max-queue-delay-us 7000, --tokenizer tokenizer/ (the "
        "deployment's), --newline-token '<NL>' (options given again change them)"
    ) in out
    assert "removed" not in out and "model_repository/fastertransformer/config.pbtxt" in out
    # the same directory as one written afresh with every option given again
    assert main([*base, str(fresh), *options]) == 0
    assert _snapshot(deploy) == _snapshot(fresh)
    table = parse_pbtxt((deploy / "model_repository/fastertransformer/config.pbtxt").read_text())
    assert '"beta"' in table.parameters["prompt_learning_tasks"].string_value
    triton = compose(deploy, schema, profiles=("openai",))["services"]["triton"]
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2
    capsys.readouterr()

    # an option given again changes only itself; the newline token goes with the tokenizer
    assert main([*base, str(deploy), "--no-tokenizer"]) == 0
    out = capsys.readouterr().out
    assert "settings as before: --instances 2, --max-queue-delay-us 7000 (" in out
    assert sorted(p.name for p in (deploy / "model_repository").iterdir()) == ["fastertransformer"]
    assert not (deploy / "tokenizer").exists()
    assert dotenv_values(deploy / ".env")["FTPREFIX_NEWLINE_TOKEN"] == ""
    assert main([*base, str(deploy), "--target", "cpu"]) == 0  # GPU instances mean nothing on CPU
    out = capsys.readouterr().out
    assert "settings as before: --max-queue-delay-us 7000 (" in out and "--instances" not in out
    assert "a running CPU server reads new tasks by itself" in out and "GPU server" not in out
    assert main([*base, str(deploy)]) == 0
    assert "settings as before: --target cpu, --max-queue-delay-us 7000 (" in capsys.readouterr().out


def test_without_a_conversion_only_a_deployment_written_before_is_updated(tmp_path: Path, capsys) -> None:
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    for out in (tmp_path / "new", tmp_path / "theirs"):
        _refused(["triton-repo", "--out", str(out)], capsys, "give the converted model to deploy: ftprefix")
    assert not (tmp_path / "new").exists() and _snapshot(tmp_path / "theirs") == {"notes.txt": b"mine"}


def test_a_tokenizer_changed_inside_the_deployment_is_kept_only_with_force(tmp_path: Path, capsys) -> None:
    _model, ft_dir, _ = make_converted(tmp_path, {"alpha": 3})
    deploy = tmp_path / "deploy"
    argv = ["triton-repo", str(ft_dir.parent), "--out", str(deploy)]
    assert main([*argv, "--tokenizer", str(tmp_path / "hf")]) == 0
    config = deploy / "tokenizer" / "tokenizer_config.json"
    mine = {**json.loads(config.read_text()), "chat_template": "{{ messages[0]['content'] }}"}
    config.write_text(json.dumps(mine))
    before = _snapshot(deploy)
    capsys.readouterr()
    _refused(argv, capsys, f"{config} was changed since ftprefix wrote it: give --tokenizer HF_DIR again")
    assert _snapshot(deploy) == before
    assert main([*argv, "--force"]) == 0
    assert json.loads(config.read_text()) == mine
    for text_model in ("preprocessing", "postprocessing"):
        copy = deploy / "model_repository" / text_model / "1" / "tokenizer" / "tokenizer_config.json"
        assert json.loads(copy.read_text()) == mine
    (deploy / "tokenizer" / "tokenizer.json").unlink()
    _refused(argv, capsys, "is incomplete: give --tokenizer HF_DIR again, or --no-tokenizer")


def test_a_moved_deployment_serves_the_same_conversion(
    gpu_deployment: Path, tmp_path: Path, schema, capsys
) -> None:
    moved = tmp_path / "elsewhere" / "deploy"
    moved.parent.mkdir()
    gpu_deployment.rename(moved)
    spec = compose(moved, schema, profiles=("openai",))
    triton = spec["services"]["triton"]
    assert Path(bind(triton, "/ftprefix/mount")["source"]).is_dir()  # the conversion, by absolute path
    assert (moved / bind(triton, "/ftprefix/triton_models")["source"]).is_dir()  # the rest, relative
    assert (moved / triton["build"]["context"]).is_dir()
    capsys.readouterr()
    argv = ["triton-repo", str(tmp_path / "converted"), "--out", str(moved), "--instances", "2"]
    assert main([*argv, "--tokenizer", str(tmp_path / "hf")]) == 0
    assert "0 file(s) changed" in capsys.readouterr().out


def test_a_conversion_inside_the_deployment_moves_with_it(tmp_path: Path, schema) -> None:
    deploy = tmp_path / "deploy"
    assert main(["triton-repo", str(example_conversion(tmp_path / "c", tp=1)), "--out", str(deploy)]) == 0
    example_conversion(deploy / "converted", tp=1)  # e.g. `ftprefix convert --out deploy/converted`
    assert main(["triton-repo", str(deploy / "converted"), "--out", str(deploy), "--force"]) == 0
    assert dotenv_values(deploy / ".env")["FTPREFIX_MODEL_DIR"] == "./converted"
    moved = tmp_path / "moved"
    deploy.rename(moved)
    source = bind(compose(moved, schema)["services"]["triton"], "/ftprefix/mount")["source"]
    assert (moved / source / "1-gpu" / "config.ini").is_file()


def test_the_printed_commands_work_pasted_into_a_shell_whatever_the_directory_is_named(
    tmp_path: Path, capsys, schema
) -> None:
    """The summary ends with the commands to run; for a directory named "GPU deploy (test's)" they
    went `cd GPU deploy (test's) && ...`, which no shell takes."""
    converted = example_conversion(tmp_path / "c", tp=1)
    out = tmp_path / "GPU deploy (test's)"
    capsys.readouterr()
    assert main(["triton-repo", str(converted), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    commands = [line.split(": ", 1)[1] for line in printed.splitlines() if "docker compose" in line]
    assert len(commands) == 2  # the GPU server, and on CPU instead
    for command in commands:
        cd = command.split(" && docker compose")[0]
        shell = subprocess.run(["bash", "-c", f"{cd} && pwd"], capture_output=True, text=True, cwd=tmp_path)
        assert (shell.returncode, shell.stdout, shell.stderr) == (0, f"{out}\n", "")
    assert compose(out, schema)["services"]["triton"]  # and compose takes the directory as named


def _refused(argv: list[str], capsys, needle: str, code: int = 2) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ftprefix triton-repo: error:") and needle in err, err


def test_a_deployment_given_where_a_conversion_belongs_is_named_as_one(tmp_path: Path, capsys) -> None:
    conversion = str(example_conversion(tmp_path / "converted", tp=1))
    deploy = tmp_path / "deploy"
    assert main(["triton-repo", conversion, "--out", str(deploy)]) == 0
    capsys.readouterr()
    again = ["triton-repo", str(deploy), "--out", str(tmp_path / "again")]
    for argv in (again, ["tasks", "list", str(deploy)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{deploy} is a deployment directory" in err
        assert f"FTPREFIX_MODEL_DIR in {deploy / '.env'}" in err
    assert not (tmp_path / "again").exists()


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_bad_output_directories_are_refused_and_left_as_they_were(tmp_path: Path, capsys) -> None:
    conversion = str(example_conversion(tmp_path / "converted", tp=1))
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    argv = ["triton-repo", conversion, "--out"]
    _refused([*argv, str(theirs)], capsys, "holds files that are not a deployment's")
    assert _snapshot(theirs) == {"notes.txt": b"mine"}
    converted = Path(conversion).parent
    before = _snapshot(converted)
    for into in (converted, Path(conversion)):  # the conversion's directory, or its <tp>-gpu
        _refused([*argv, str(into)], capsys, "is a converted model; write its deployment to a directory")
    assert _snapshot(converted) == before
    (tmp_path / "file").write_text("x")
    _refused(["triton-repo", conversion, "--out", str(tmp_path / "file")], capsys, "is not a directory")
    _refused(
        ["triton-repo", str(tmp_path / "missing"), "--out", str(tmp_path / "new" / "in" / "deploy")],
        capsys,
        "not a converted model",
    )
    _refused(
        ["triton-repo", conversion, "--out", str(tmp_path / "new"), "--tokenizer", str(tmp_path)],
        capsys,
        "holds no tokenizer",
    )
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if ".ftprefix-" in p.name]  # no stage left behind


def test_the_root_directory_is_refused_naming_only_files_that_were_there(tmp_path: Path, capsys) -> None:
    """`/` is its own parent, so the lock file this run keeps beside DIR is in it: the refusal named
    that lock first, as if it were one of the files found there."""
    conversion = str(example_conversion(tmp_path / "converted", tp=1))
    before = sorted(os.listdir("/"))
    as_root = os.geteuid() == 0  # another user may not write the lock in / at all
    assert main(["triton-repo", conversion, "--out", "/"]) == (2 if as_root else 1)
    err = capsys.readouterr().err
    named = f"--out / holds files that are not a deployment's ({', '.join(before[:3])}, ...)"
    says = named if as_root else "Permission denied"
    assert err.count("\n") == 1 and err.startswith(f"ftprefix triton-repo: error: {says}"), err
    assert sorted(os.listdir("/")) == before


def test_a_link_to_a_directory_is_written_where_it_leads_and_stays_a_link(tmp_path: Path, capsys) -> None:
    conversion = str(example_conversion(tmp_path / "converted", tp=1))
    (tmp_path / "volume").mkdir()
    link = tmp_path / "deploy"
    link.symlink_to(tmp_path / "volume")
    assert main(["triton-repo", conversion, "--out", str(link)]) == 0
    assert link.is_symlink() and (tmp_path / "volume" / "compose.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "deploy", "volume"]
    capsys.readouterr()
    assert main(["triton-repo", "--out", str(link)]) == 0  # and updated through it
    assert "0 file(s) changed" in capsys.readouterr().out


def test_runs_writing_one_directory_at_once_take_turns(tmp_path: Path) -> None:
    conversion = str(example_conversion(tmp_path / "converted", tp=1))
    deploy = tmp_path / "new" / "deploy"
    argv = [sys.executable, "-m", "ftprefix", "triton-repo", conversion, "--out", str(deploy)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    runs = [subprocess.Popen(argv, **pipes) for _ in range(4)]
    results = [(run.wait(120), *run.communicate()) for run in runs]
    assert [(code, err) for code, _out, err in results] == [(0, "")] * 4
    outs = sorted(out for _code, out, _err in results)
    assert [out.startswith(f"updated {deploy}") for out in outs] == [True, True, True, False]
    assert outs[-1].startswith(f"wrote {deploy}")
    assert all("0 file(s) changed" in out for out in outs[:3])  # each found the first one's work done
    assert [p.name for p in deploy.parent.iterdir()] == ["deploy"]  # no stage, no lock file left


def test_a_run_waiting_for_one_that_fails_writes_the_directory_the_failed_one_made_and_removed(
    tmp_path: Path,
) -> None:
    """The failed run removes the parent it made for DIR's lock, in which the other one waited."""
    first, second = (example_conversion(tmp_path / name, tp=1) for name in ("first", "second"))
    deploy = tmp_path / "new" / "deploy"
    lock_file = deploy.parent / f".deploy{layout.LOCK_FILE}"
    argv = [sys.executable, "-m", "ftprefix", "triton-repo", "--out", str(deploy)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    with locking.exclusive(first.parent):  # the first run takes DIR's lock, then waits for this one
        failing = subprocess.Popen([*argv, str(first)], **pipes)
        wait_until_open(failing, lock_file)
        waiting = subprocess.Popen([*argv, str(second)], **pipes)
        wait_until_open(waiting, lock_file)
        failing.send_signal(signal.SIGTERM)  # it fails holding DIR's lock, as on Ctrl-C
        _out, err = failing.communicate(timeout=60)
    assert failing.returncode == 128 + signal.SIGTERM and "terminated" in err, err
    out, err = waiting.communicate(timeout=60)
    assert (waiting.returncode, err) == (0, "") and out.startswith(f"wrote {deploy}")
    assert [p.name for p in deploy.parent.iterdir()] == ["deploy"]


def test_a_deployment_is_not_written_while_its_conversion_is_being_changed(tmp_path: Path, capsys) -> None:
    conversion = example_conversion(tmp_path / "converted", tp=1)
    with locking.exclusive(conversion.parent):  # as `ftprefix tasks add` holds it
        _refused(
            ["triton-repo", str(conversion), "--out", str(tmp_path / "deploy"), "--wait", "0.2"],
            capsys,
            f"another ftprefix command is changing {conversion.parent}",
            code=1,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]
    assert main(["triton-repo", str(conversion), "--out", str(tmp_path / "deploy")]) == 0


def test_a_deployment_of_another_version_or_with_edited_files_needs_force(tmp_path: Path, capsys) -> None:
    conversion = str(example_conversion(tmp_path / "converted", tp=1))
    deploy = tmp_path / "deploy"
    argv = ["triton-repo", conversion, "--out", str(deploy)]
    assert main(argv) == 0
    manifest = deploy / "ftprefix-deployment.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "ftprefix": "0.0.1"}))
    (deploy / ".env").write_text((deploy / ".env").read_text().replace("FTPREFIX_GPUS=1", "FTPREFIX_GPUS=3"))
    before = _snapshot(deploy)
    _refused(argv, capsys, "written by ftprefix 0.0.1")
    assert _snapshot(deploy) == before
    assert main([*argv, "--force"]) == 0
    assert dotenv_values(deploy / ".env")["FTPREFIX_GPUS"] == "3"  # the user's value, kept
    assert json.loads(manifest.read_text())["ftprefix"] == ftprefix.__version__
    with open(deploy / "compose.yaml", "a") as f:
        f.write("# my change\n")
    before = _snapshot(deploy)
    _refused(argv, capsys, "compose.override.yaml")
    assert _snapshot(deploy) == before
    assert main([*argv, "--force"]) == 0
    assert (deploy / "compose.yaml").read_bytes() == assets.asset("compose/gpu.yaml").read_bytes()


def test_a_streaming_deployment_keeps_the_tokenizer_for_the_gateway(
    tmp_path: Path, tokenizer: Path, capsys
) -> None:
    conversion = str(example_conversion(tmp_path / "converted", tp=1))
    argv = [
        "triton-repo",
        conversion,
        "--out",
        str(tmp_path / "d"),
        "--streaming",
        "--tokenizer",
        str(tokenizer),
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "#704" in err
    assert (tmp_path / "d" / "tokenizer" / "tokenizer.json").is_file()
    assert sorted(p.name for p in (tmp_path / "d" / "model_repository").iterdir()) == ["fastertransformer"]
    ft = parse_pbtxt((tmp_path / "d/model_repository/fastertransformer/config.pbtxt").read_text())
    assert ft.model_transaction_policy.decoupled


def test_impossible_instance_counts_and_batching_windows_are_refused_in_one_line(
    tmp_path: Path, capsys
) -> None:
    conversion = str(example_conversion(tmp_path / "converted", tp=1))
    for extra, message in (
        (["--instances", "0"], "at least 1"),
        (["--instances", "2", "--target", "cpu"], "GPU"),
        (["--max-queue-delay-us", "-5"], "between 0 and"),
        (["--newline-token", "<NL>"], "--tokenizer"),
    ):
        _refused(["triton-repo", conversion, "--out", str(tmp_path / "r"), *extra], capsys, message)
        assert not (tmp_path / "r").exists()


def test_the_newline_token_reaches_the_text_models_and_the_gateway(
    tmp_path: Path, tokenizer: Path, schema
) -> None:
    conversion = str(example_conversion(tmp_path / "converted", tp=1))
    argv = ["triton-repo", conversion, "--out", str(tmp_path / "d"), "--tokenizer", str(tokenizer)]
    assert main([*argv, "--newline-token", "<NL>"]) == 0
    assert dotenv_values(tmp_path / "d" / ".env")["FTPREFIX_NEWLINE_TOKEN"] == "<NL>"
    pre = (tmp_path / "d/model_repository/preprocessing/config.pbtxt").read_text()
    assert 'key: "newline_token"' in pre and 'string_value: "<NL>"' in pre
    api = compose(tmp_path / "d", schema, profiles=("openai",))["services"]["openai"]
    assert "--newline-token=<NL>" in api["command"]
    assert (
        json.loads((tmp_path / "d" / "ftprefix-deployment.json").read_text())["settings"]["newline_token"]
        == "<NL>"
    )


def test_a_newline_token_edited_in_env_reaches_the_text_models_when_written_again(
    tmp_path: Path, tokenizer: Path, schema, capsys
) -> None:
    """The gateway takes .env's FTPREFIX_NEWLINE_TOKEN, the text models the value written into
    their config: an edit of .env kept on writing again left the two apart for good."""
    conversion = str(example_conversion(tmp_path / "converted", tp=1))
    deploy = tmp_path / "d"
    argv = ["triton-repo", conversion, "--out", str(deploy)]
    assert main([*argv, "--tokenizer", str(tokenizer)]) == 0
    env_file = deploy / ".env"
    env_file.write_text(
        env_file.read_text().replace("FTPREFIX_NEWLINE_TOKEN=\n", "FTPREFIX_NEWLINE_TOKEN=<NL>\n")
    )
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "--newline-token '<NL>' (your .env's)" in out and "kept your FTPREFIX_NEWLINE_TOKEN" not in out
    for text_model in ("preprocessing", "postprocessing"):
        config = parse_pbtxt((deploy / "model_repository" / text_model / "config.pbtxt").read_text())
        assert config.parameters["newline_token"].string_value == "<NL>"
    api = compose(deploy, schema, profiles=("openai",))["services"]["openai"]
    assert "--newline-token=<NL>" in api["command"]
    assert (
        json.loads((deploy / "ftprefix-deployment.json").read_text())["settings"]["newline_token"] == "<NL>"
    )
