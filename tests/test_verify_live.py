"""`ftprefix verify --url` against real running servers: a correct one, a streaming one, and one
whose converted files were deliberately broken (the expected answers come from Hugging Face)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ftprefix import cli, layout
from ftprefix.demo import toy
from ftprefix.serving.server import EmbeddedServer, free_port

TASKS = {"smile": 4, "story": 6}
CHECKED = ("(base model)", *TASKS)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("live")
    hf = root / "hf"
    m = toy.build_model(hf, seed=7, with_tokenizer=False)
    c = m.config
    paths = []
    for seed, (name, length) in enumerate(TASKS.items(), start=1):
        paths.append(f"{name}={root / name}.pt")
        torch.save(
            toy.random_prefix(length, c.num_hidden_layers, c.hidden_size, seed=seed), root / f"{name}.pt"
        )
    prefix = ",".join(paths)
    argv = [
        "convert",
        "--model",
        str(hf),
        "--prefix",
        prefix,
        "--tp",
        "2",
        "--dtype",
        "fp32",
        "--out",
        str(root / "ft"),
    ]
    assert cli.main(argv) == 0
    return {"root": root, "hf": hf, "ft": root / "ft", "prefix": prefix}


def _verify(url: str, model: dict, *extra: str) -> int:
    return cli.main(
        ["verify", "--url", url, "--model", str(model["hf"]), "--prefix", model["prefix"], *extra]
    )


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streaming"])
def test_a_correct_server_agrees(model, streaming, capsys) -> None:
    # one engine instance: verify's requests are its subject, not how many answer them
    with EmbeddedServer(
        model["ft"], streaming=streaming, watch_interval=None, stop_timeout=0, instances=1
    ) as server:
        capsys.readouterr()
        # a URL with its scheme, as users paste them: the streamed requests went out with it
        assert _verify(f"grpc://{server.grpc_url}", model) == 0
    said = capsys.readouterr()
    out = said.out
    for name in CHECKED:
        row = next(line for line in out.splitlines() if line.startswith(name))
        assert row.split()[-1] == "ok" and " 24 " in row  # 3 prompts x 8 tokens compared
    assert out.splitlines()[-1].startswith("ok: 3 of 3 checked")
    # on stderr, as it goes: a model of billions of parameters takes minutes on CPU
    progress = [re.sub(r"\d+\.\d s", "T s", line) for line in said.err.splitlines()]
    assert progress == [
        "ftprefix verify: read the Hugging Face model in T s",
        "ftprefix verify: the server answered 9 rows in T s; 3 checks",
        *(f"ftprefix verify: {name}: checked ({i} of 3, T s)" for i, name in enumerate(CHECKED, 1)),
    ]


def test_a_server_with_swapped_keys_and_values_is_caught(model, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "ft"
    shutil.copytree(model["ft"], broken)
    ft_dir = layout.find_ft_dir(broken)
    cfg = layout.read_config(ft_dir)
    shape = layout.prefix_rank_shape(cfg, TASKS["story"])
    for name in layout.prefix_file_names("story", cfg.tensor_para_size):
        arr = layout.read_array(ft_dir / name, shape, cfg.np_dtype)
        np.ascontiguousarray(arr[:, ::-1]).tofile(ft_dir / name)  # [layers, 2 (k, v), ...]: v, k
    with EmbeddedServer(broken, watch_interval=None, stop_timeout=0, instances=1) as server:
        capsys.readouterr()
        assert _verify(server.grpc_url, model) == 1
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in (["smile"], ["story"])}
    assert "MISMATCH" in rows["story"] and rows["smile"].endswith("ok")
    assert out.splitlines()[-1] == "MISMATCH: story"


def test_bad_input_is_one_line_and_exit_2(model, tmp_path: Path, capsys) -> None:
    wrong_width = tmp_path / "wide.pt"
    torch.save(toy.random_prefix(4, 3, 64), wrong_width)
    wrong_length = tmp_path / "short.pt"
    torch.save(toy.random_prefix(2, 2, 64), wrong_length)
    unreachable = f"127.0.0.1:{free_port()}"
    with EmbeddedServer(model["ft"], watch_interval=None, stop_timeout=0, instances=1) as server:
        url = server.grpc_url
        for argv, message in (
            (["--url", unreachable, "--prefix", model["prefix"]], "no Triton server reachable"),
            (["--url", url, "--prefix", f"nope={wrong_length}"], "serves no task 'nope'"),
            (["--url", url, "--prefix", f"smile={wrong_width}"], "values per token"),
            (["--url", url, "--prefix", f"smile={wrong_length}"], "the server's prefix has 4 tokens"),
            (["--url", url, str(model["ft"])], "one of them"),
        ):
            capsys.readouterr()
            assert cli.main(["verify", "--model", str(model["hf"]), *argv]) == 2, message
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and message in err, err
