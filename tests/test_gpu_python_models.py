"""The GPU image's text models in the environment its Dockerfile gives them, without Docker.

The image (image/Dockerfile.gpu of a deployment) installs the packages pinned in
triton-python-models.txt and the deployment's ftprefix wheel with --no-deps (no torch, no
transformers, no tritonclient). The README's test command installs the same file into
.venv/triton-python-models; here the wheel of a deployment `ftprefix triton-repo` wrote is
installed the way the Dockerfile installs it, and the deployment's `preprocessing` /
`postprocessing` models run on a real Triton server whose python models import from those two
directories alone. They must give every recorded answer of the rinna-style tokenizer.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from deployment_support import install_like_the_image
from sentencepiece_reference import RINNA, golden_rows
from serving_support import tensors

from ftprefix import assets
from ftprefix.serving import deployment, tritonserver
from ftprefix.serving.server import free_ports
from tools.regenerate_triton_models import example_conversion

REPO = Path(__file__).resolve().parent.parent
GPU_ENV = REPO / ".venv" / "triton-python-models"
REQUIREMENTS = Path(str(assets.asset("image/triton-python-models.txt")))
TEXT_MODELS = ("preprocessing", "postprocessing")


def _pins() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines()]
    return dict(line.split("==") for line in lines if line)


def test_the_dockerfile_installs_exactly_the_pinned_file_and_ftprefix_without_dependencies() -> None:
    dockerfile = assets.asset("image/Dockerfile.gpu").read_text(encoding="utf-8")
    assert "pip3 install --no-cache-dir -r /workspace/build/ftprefix/triton-python-models.txt" in dockerfile
    assert "pip3 install --no-cache-dir --no-deps /workspace/build/ftprefix/ftprefix-*.whl" in dockerfile
    installs = [line for line in dockerfile.splitlines() if "pip3 install" in line]
    assert not [line for line in installs if re.search(r"torch|transformers|tritonclient", line)]
    assert set(_pins()) == {"numpy", "tokenizers", "sentencepiece"}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Path:
    """The deployment `ftprefix triton-repo` writes for the GPU, with the rinna-style tokenizer."""
    root = tmp_path_factory.mktemp("gpu-text")
    conversion = example_conversion(root / "converted", tp=1, end_id=3, vocab_size=1200)  # the tokenizer's
    deployment.write_deployment(conversion, root / "deploy", target="gpu", tokenizer_dir=RINNA)
    return root / "deploy"


@pytest.fixture(scope="module")
def gpu_site(tmp_path_factory, deployed) -> list[str]:
    """The python models' import path as in the image: the pinned packages, then ftprefix."""
    assert GPU_ENV.is_dir(), (
        f"{GPU_ENV} is missing: the README's install command installs {REQUIREMENTS.name} there"
    )
    installed = dict(
        p.name.removesuffix(".dist-info").lower().split("-", 1) for p in GPU_ENV.glob("*.dist-info")
    )
    assert {name: installed.get(name) for name in _pins()} == _pins()
    assert not {"torch", "transformers", "tritonclient"} & set(installed)
    (wheel,) = (deployed / deployment.IMAGE_DIR).glob("ftprefix-*.whl")  # what the Dockerfile installs
    target = tmp_path_factory.mktemp("ftprefix-site")
    install_like_the_image(wheel, target)
    assert (target / "ftprefix" / "text" / "__init__.py").is_file()
    return [str(target), str(GPU_ENV)]


@pytest.fixture(scope="module")
def text_server(tmp_path_factory, gpu_site, deployed):
    """A real tritonserver with the GPU repository's text models, importing from `gpu_site` only."""
    root = tmp_path_factory.mktemp("gpu-text-server")
    repo = deployed / deployment.REPOSITORY_DIR
    assert 'backend: "fastertransformer"' in (repo / "fastertransformer" / "config.pbtxt").read_text()
    grpc_port, http_port = free_ports(2)
    cmd = tritonserver.command(
        repo,
        tritonserver.prepare_backends(root / "backends"),
        host="127.0.0.1",
        grpc_port=grpc_port,
        http_port=http_port,
        models=TEXT_MODELS,  # the FT backend itself needs a GPU
    )
    env = {**tritonserver.server_env(), tritonserver.SITE_DIRS_ENV: os.pathsep.join(gpu_site)}
    log = root / "tritonserver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"127.0.0.1:{grpc_port}"
    try:
        with grpcclient.InferenceServerClient(url) as client:
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if client.is_server_ready():
                        break
                except Exception:  # not listening yet
                    pass
                time.sleep(0.2)  # bounded poll for the server's start; asserted next
            assert client.is_server_ready(), log.read_text(errors="replace")[-3000:]
        yield url, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def test_the_text_models_load_from_the_image_environment_alone(text_server) -> None:
    _url, log = text_server
    text = log.read_text(errors="replace")
    assert not re.search(r"Traceback|ModuleNotFoundError", text), text[-3000:]
    # The python backend stub runs the base interpreter, which has none of these packages: the
    # loaded models found them in the image's two directories (FTPREFIX_SITE_DIRS) and nowhere else.
    stub_site = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    for name in ("ftprefix", "tokenizers", "sentencepiece", "torch", "transformers"):
        assert not (stub_site / "site-packages" / name).exists(), name


def test_preprocessing_gives_the_recorded_ids(text_server) -> None:
    url, _log = text_server
    rows = [r for r in golden_rows(RINNA) if r["ids"]]
    arrays = {
        "QUERY": np.array([[r["text"].encode("utf-8")] for r in rows], dtype=object),
        "REQUEST_OUTPUT_LEN": np.full((len(rows), 1), 4, dtype=np.uint32),
        "BAD_WORDS_DICT": np.array([[b""]] * len(rows), dtype=object),
        "STOP_WORDS_DICT": np.array([["。,</s>".encode()]] * len(rows), dtype=object),
    }
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer("preprocessing", tensors(arrays))
    ids, lengths = result.as_numpy("INPUT_ID"), result.as_numpy("REQUEST_INPUT_LEN")
    assert [ids[b, : int(lengths[b, 0])].tolist() for b in range(len(rows))] == [r["ids"] for r in rows]
    # stop words: "。" as generated mid-sentence (no leading ▁ piece), "</s>" as its id
    stop = result.as_numpy("STOP_WORDS_IDS")[0]
    assert stop[1].tolist()[:2] == [1, 2] and stop[0].tolist()[:2] == [16, 3]


def test_postprocessing_gives_the_recorded_text(text_server) -> None:
    url, _log = text_server
    rows = [r for r in golden_rows(RINNA) if r["ids"] and 3 not in r["ids"]]
    width = max(len(r["ids"]) for r in rows) + 1
    batch = np.full((len(rows), 1, width), 3, dtype=np.uint32)
    for b, r in enumerate(rows):
        batch[b, 0, : len(r["ids"])] = r["ids"]
    arrays = {
        "TOKENS_BATCH": batch,
        "REQUEST_INPUT_LEN": np.zeros((len(rows), 1), dtype=np.uint32),
        "REQUEST_OUTPUT_LEN": np.array([[len(r["ids"])] for r in rows], dtype=np.uint32),
    }
    with grpcclient.InferenceServerClient(url) as client:
        output = client.infer("postprocessing", tensors(arrays)).as_numpy("OUTPUT")
    assert [v.decode("utf-8") for v in output[:, 0]] == [r["decode_skip_special"] for r in rows]
    assert len(rows) >= 70
