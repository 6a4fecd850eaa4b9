"""`--model` and `--tokenizer` given as a Hugging Face model id (ORG/NAME), read from the local
Hugging Face cache as transformers' `from_pretrained` reads it: they were refused as "not a
directory" with no word of the cache.

The cache is laid out here as huggingface_hub lays out a download (blobs by digest, the
snapshot's files links to them, refs/main naming the revision), and the commands run in their own
processes with HF_HUB_CACHE pointing at it, so the real huggingface_hub resolves the id.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from convert_support import expected_base_files, hf_json, hf_state, ignores_peft_internal_warnings

from ftprefix.cli import main
from ftprefix.demo.toy import build_model

REPO_ID = "acme/tiny-neox"


def _hub_cache(root: Path, repo_id: str, model_dir: Path) -> None:
    org, name = repo_id.split("/")
    repo = root / f"models--{org}--{name}"
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for path in model_dir.iterdir():
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / digest).write_bytes(data)
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", digest))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A toy GPT-NeoX with its tokenizer, as a directory and in a Hugging Face cache."""
    root = tmp_path_factory.mktemp("hub")
    build_model(root / "hf", hidden_size=32, num_heads=4, num_layers=2, vocab_size=512)
    _hub_cache(root / "cache", REPO_ID, root / "hf")
    return {"hf": root / "hf", "cache": root / "cache"}


def _ftprefix(cached: dict[str, Path], cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_CACHE": str(cached["cache"]), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ftprefix.cli", *argv], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_a_model_id_in_the_cache_converts_as_its_files_say(cached: dict[str, Path], tmp_path: Path) -> None:
    run = _ftprefix(
        cached, tmp_path, "convert", "--model", REPO_ID, "--tp", "2", "--dtype", "fp32", "--out", "ft"
    )
    assert run.returncode == 0, run.stderr
    ft_dir = tmp_path / "ft" / "2-gpu"
    expected = expected_base_files(hf_state(cached["hf"]), hf_json(cached["hf"]), 2, "fp32")
    assert {name: (ft_dir / name).read_bytes() for name in expected} == expected
    config = configparser.ConfigParser()
    config.read(ft_dir / "config.ini")
    # the model's name, not its snapshot directory's (a commit hash): the OpenAI API's base model
    assert config["gptneox"]["model_name"] == "tiny-neox"

    deploy = _ftprefix(cached, tmp_path, "triton-repo", "ft", "--out", "deploy", "--tokenizer", REPO_ID)
    assert deploy.returncode == 0, deploy.stderr
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "deploy" / "tokenizer" / name).read_bytes() == (cached["hf"] / name).read_bytes()


def test_a_model_id_not_in_the_cache_is_one_line_naming_the_download(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for argv in (
        ["convert", "--model", "acme/absent", "--out", "ft"],
        ["generate", "--tokenizer", "acme/absent", "--url", "127.0.0.1:1", "hello"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "`hf download acme/absent`" in err, err
    assert list(tmp_path.iterdir()) == []


@ignores_peft_internal_warnings
def test_a_peft_adapter_named_by_its_id_is_a_task_named_after_it(
    cached: dict[str, Path], tmp_path: Path
) -> None:
    """PEFT adapters are published on the Hub as repositories of their own: `--prefix ORG/NAME`
    reads one from the cache, as `--model` reads the base model, and names the task NAME."""
    from convert_support import read_prefix_files
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    from ftprefix.hf_compat import load_gptneox

    peft_model = get_peft_model(
        load_gptneox(cached["hf"]), PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3)
    )
    with torch.no_grad():
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(4)))
        expected = peft_model.get_prompt_embedding_to_save("default").numpy()  # what PEFT feeds the model
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    _hub_cache(cached["cache"], "acme/shout-adapter", tmp_path / "adapter")
    work = tmp_path / "work"
    work.mkdir()
    argv = ("convert", "--model", REPO_ID, "--prefix", "acme/shout-adapter", "--dtype", "fp32", "--out", "ft")
    run = _ftprefix(cached, work, *argv)
    assert run.returncode == 0, run.stderr
    got = read_prefix_files(work / "ft" / "1-gpu", "shout-adapter", hf_json(cached["hf"]), 1, "fp32", 3)
    np.testing.assert_allclose(got.reshape(3, -1), expected, atol=1e-6)
    missing = _ftprefix(cached, work, "tasks", "add", "ft", "--prefix", "acme/absent-adapter")
    assert missing.returncode == 2 and "`hf download acme/absent-adapter`" in missing.stderr, missing.stderr
