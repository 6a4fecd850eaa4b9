"""`pip install ftprefix` (no extras) is the client: no torch, no pytriton, and it works.

The core install is rebuilt offline: a fresh virtual environment holding exactly the distributions
ftprefix's core requirements resolve to (linked from this environment's installed files, so no
network is needed), then a real client call against a running `ftprefix serve`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from hf_reference import HFReference
from packaging.requirements import Requirement
from serving_support import make_converted

import ftprefix
from ftprefix.serving.server import EmbeddedServer

REPO = Path(__file__).resolve().parent.parent


def _name(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def core_closure() -> dict[str, metadata.Distribution]:
    """ftprefix and everything its core requirements (no extras) pull in, recursively."""
    found: dict[str, metadata.Distribution] = {}
    todo: list[tuple[str, frozenset[str]]] = [("ftprefix", frozenset())]
    while todo:
        name, extras = todo.pop()
        dist = metadata.distribution(name)
        found[_name(name)] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            wanted = not req.marker or any(req.marker.evaluate({"extra": e}) for e in extras or {""})
            if wanted and _name(req.name) not in found:
                todo.append((req.name, frozenset(req.extras)))
    return found


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}, scheme="venv"))
    for dist in core_closure().values():
        for file in dist.files or []:
            source = Path(dist.locate_file(file)).resolve()
            target = site / file
            if source.is_file() and not target.exists() and ".." not in file.parts:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(source)
    return venv


def test_core_requirements_are_the_clients_and_nothing_heavy() -> None:
    names = set(core_closure())
    assert {"numpy", "tokenizers", "sentencepiece", "tritonclient", "grpcio", "protobuf"} <= names
    assert not names & {"torch", "transformers", "nvidia-pytriton", "safetensors", "fastapi"}


def test_core_install_runs_a_client_call_without_torch(core_venv: Path, tmp_path: Path) -> None:
    python = core_venv / "bin" / "python"
    no_torch = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True, check=False)
    assert no_torch.returncode != 0  # the environment really lacks torch

    _model, ft_dir, prefixes = make_converted(tmp_path, {"alpha": 3})
    prompt = [5, 17, 42, 8]
    want = HFReference(tmp_path / "hf", prefixes).greedy(prompt, "alpha", 5, end_id=0)[0]
    code = (
        "import sys\n"
        "from ftprefix.client import Client\n"
        "with Client(sys.argv[1]) as client:\n"
        f"    print(client.generate({prompt}, task='alpha', max_new_tokens=5).token_ids)\n"
        "heavy = [m for m in ('torch', 'transformers', 'pytriton') if m in sys.modules]\n"
        "sys.exit(f'loaded {heavy}' if heavy else 0)\n"
    )
    with EmbeddedServer(ft_dir, watch_interval=None, stop_timeout=0) as server:
        run = subprocess.run(
            [python, "-c", code, server.grpc_url], capture_output=True, text=True, check=False
        )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(want)


def test_a_command_needing_an_extra_names_it_in_one_line(core_venv: Path, tmp_path: Path) -> None:
    python = core_venv / "bin" / "python"
    np.save(tmp_path / "p.npy", np.zeros((2, 8), np.float32))
    for argv, extra in (
        (
            [
                "convert",
                "--model",
                str(tmp_path),
                "--prefix",
                str(tmp_path / "p.npy"),
                "--out",
                str(tmp_path / "o"),
            ],
            "convert",
        ),
        (["serve", str(tmp_path)], "serve"),
    ):
        run = subprocess.run(
            [python, "-m", "ftprefix.cli", *argv], capture_output=True, text=True, check=False
        )
        assert run.returncode == 2
        assert run.stderr.count("\n") == 1 and f"pip install 'ftprefix[{extra}]'" in run.stderr
    assert not (tmp_path / "o").exists()


def test_the_core_install_reads_sentencepiece_tokenizers_exactly(core_venv: Path) -> None:
    from sentencepiece_reference import LLAMA, RINNA, golden_rows

    code = (
        "import json, sys\n"
        "from ftprefix.client import Client\n"
        "for directory in sys.argv[1:]:\n"
        "    tokenizer = Client('localhost:1', tokenizer=directory).tokenizer\n"
        "    rows = json.load(open(directory + '/golden.json'))['rows']\n"
        "    print(json.dumps([tokenizer.encode(r['text']) for r in rows]))\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "sys.exit(f'loaded {heavy}' if heavy else 0)\n"
    )
    run = subprocess.run(
        [core_venv / "bin" / "python", "-c", code, str(RINNA), str(LLAMA)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    got = [json.loads(line) for line in run.stdout.splitlines()]
    assert got == [[r["ids"] for r in golden_rows(d)] for d in (RINNA, LLAMA)]


# -- the built wheel alone deploys ------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A fresh virtual environment holding ftprefix only as its built wheel (no clone on its path),
    with the packages of the [convert] extra taken from this environment (no network)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"  # what a release builds from: the package, pyproject.toml, README.md
    shutil.copytree(REPO / "ftprefix", source / "ftprefix", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(root / "dist"), str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = (root / "dist").glob("ftprefix-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True
    )
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}, scheme="venv"))
    (site / "zz-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")  # after the wheel's own
    return venv


def test_the_wheel_alone_converts_and_writes_a_whole_deployment(wheel_venv: Path, tmp_path: Path) -> None:
    from deployment_support import compose, compose_schema, missing_copy_sources
    from serving_support import HIDDEN, LAYERS

    from ftprefix import assets
    from ftprefix.demo.toy import build_model, random_prefix

    schema = compose_schema()
    build_model(tmp_path / "hf", hidden_size=HIDDEN, num_heads=4, num_layers=LAYERS, seed=1)
    np.save(tmp_path / "taskA.npy", random_prefix(3, LAYERS, HIDDEN, seed=2).numpy())
    np.save(tmp_path / "taskB.npy", random_prefix(5, LAYERS, HIDDEN, seed=3).numpy())
    ftprefix_cli = str(wheel_venv / "bin" / "ftprefix")
    where = subprocess.run(
        [wheel_venv / "bin" / "python", "-c", "import ftprefix; print(ftprefix.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert where.stdout.startswith(str(wheel_venv)), where.stdout + where.stderr  # not the clone
    for argv in (
        ["convert", "--model", "hf", "--prefix", "taskA.npy,taskB.npy", "--tp", "2", "--out", "converted"],
        ["triton-repo", "converted", "--out", "d", "--tokenizer", "hf", "--instances", "2"],
    ):
        run = subprocess.run([ftprefix_cli, *argv], capture_output=True, text=True, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
    deploy = tmp_path / "d"
    spec = compose(deploy, schema, profiles=("openai",))
    assert spec["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 4
    for dockerfile in ("Dockerfile.gpu", "Dockerfile.cpu"):
        assert missing_copy_sources(deploy / "image", dockerfile) == []
    for name, data in assets.walk("image").items():  # the patch and the Dockerfiles, as shipped
        assert (deploy / "image" / name).read_bytes() == data
    (wheel,) = (deploy / "image").glob("ftprefix-*.whl")
    assert wheel.name == f"ftprefix-{ftprefix.__version__}-py3-none-any.whl"
    table = (deploy / "model_repository" / "fastertransformer" / "config.pbtxt").read_text()
    assert '\\"taskA\\"' in table and '\\"taskB\\"' in table
