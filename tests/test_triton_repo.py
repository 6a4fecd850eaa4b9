"""Generated model repositories (the model_repository/ of a deployment): GPU config for the FT backend
vs the CPU twin, and `triton_models/`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ftprefix import protocol
from ftprefix.cli import main
from ftprefix.demo.toy import build_tokenizer
from ftprefix.serving.deployment import REPOSITORY_DIR
from ftprefix.task_table import TaskTable
from tools.regenerate_triton_models import EXAMPLE_TASKS, example_conversion

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "triton_models"


def _config_only_conversion(root: Path, tp: int, dtype: str, tasks: TaskTable = EXAMPLE_TASKS) -> Path:
    return example_conversion(root, tp, dtype, tasks)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    build_tokenizer(d)
    return d


def _parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())


def _io(cfg: mc.ModelConfig) -> tuple:
    def one(t) -> tuple:
        return (
            t.name,
            t.data_type,
            tuple(t.dims),
            t.HasField("reshape"),
            tuple(t.reshape.shape),
            getattr(t, "optional", None),
        )

    return tuple(one(t) for t in cfg.input), tuple(one(t) for t in cfg.output)


def test_gpu_config_matches_conversion_and_cpu_twin_interface(tmp_path, tokenizer_dir):
    ft_dir = _config_only_conversion(tmp_path / "conv", tp=2, dtype="fp16")
    gpu, cpu = tmp_path / "gpu", tmp_path / "cpu"
    assert (
        main(["triton-repo", str(ft_dir.parent), "--out", str(gpu), "--tokenizer", str(tokenizer_dir)]) == 0
    )
    assert main(["triton-repo", str(ft_dir), "--out", str(cpu), "--target", "cpu"]) == 0
    gpu, cpu = gpu / REPOSITORY_DIR, cpu / REPOSITORY_DIR

    g = _parse(gpu / "fastertransformer" / "config.pbtxt")
    c = _parse(cpu / "fastertransformer" / "config.pbtxt")
    assert g.backend == "fastertransformer" and c.backend == "python"
    params = {k: v.string_value for k, v in g.parameters.items()}
    assert params["tensor_para_size"] == "2"
    assert params["pipeline_para_size"] == "1"
    assert params["data_type"] == "fp16"
    assert params["model_type"] == "GPT-NeoX"
    assert params["model_checkpoint_path"] == "/ftprefix/model/2-gpu"
    assert params["enable_custom_all_reduce"] == "0"
    table = TaskTable.from_json(params[protocol.TASK_TABLE_PARAMETER])
    assert [(t.id, t.name, t.prompt_length) for t in table] == [(0, "smileface", 10), (1, "summary", 16)]
    assert c.parameters["model_checkpoint_path"].string_value == str(ft_dir.resolve())

    # same tensor interface, names/types/dims/reshape/optional, as the FT backend's gptneox example
    assert _io(g) == _io(c)
    names = {t.name: t for t in g.input}
    assert names["input_ids"].data_type == mc.TYPE_UINT32 and list(names["input_ids"].dims) == [-1]
    assert not names["input_ids"].optional and not names["input_lengths"].optional
    assert names["prompt_learning_task_name_ids"].optional
    assert names["prompt_learning_task_name_ids"].HasField("reshape")
    assert (
        list(names["stop_words_list"].dims) == [2, -1] and names["stop_words_list"].data_type == mc.TYPE_INT32
    )
    assert [(o.name, list(o.dims)) for o in g.output] == [
        ("output_ids", [-1, -1]),
        ("sequence_length", [-1]),
        ("cum_log_probs", [-1]),
        ("output_log_probs", [-1, -1]),
    ]
    assert g.max_batch_size == c.max_batch_size == 1024
    assert g.HasField("dynamic_batching") and c.HasField("dynamic_batching")
    assert not g.model_transaction_policy.decoupled

    assert not (gpu / "fastertransformer" / "1" / "model.py").exists()
    assert (cpu / "fastertransformer" / "1" / "model.py").is_file()
    for name in ("preprocessing", "postprocessing"):
        assert _parse(gpu / name / "config.pbtxt").backend == "python"
        assert (gpu / name / "1" / "tokenizer" / "tokenizer.json").is_file()
    ens = _parse(gpu / "ensemble" / "config.pbtxt")
    steps = [s.model_name for s in ens.ensemble_scheduling.step]
    assert steps == ["preprocessing", "fastertransformer", "postprocessing"]
    assert ens.parameters[protocol.TASK_TABLE_PARAMETER].string_value == params[protocol.TASK_TABLE_PARAMETER]


def test_streaming_makes_the_model_decoupled(tmp_path):
    ft_dir = _config_only_conversion(tmp_path / "conv", tp=1, dtype="fp32")
    assert main(["triton-repo", str(ft_dir), "--out", str(tmp_path / "r"), "--streaming"]) == 0
    config = tmp_path / "r" / REPOSITORY_DIR / "fastertransformer" / "config.pbtxt"
    assert _parse(config).model_transaction_policy.decoupled


def test_bad_input_is_one_line_error_and_nothing_written(tmp_path, capsys, tokenizer_dir):
    out = tmp_path / "out"
    assert main(["triton-repo", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ftprefix triton-repo: error:") and "\n" not in err
    assert not out.exists()
    ft_dir = _config_only_conversion(tmp_path / "conv", tp=1, dtype="fp32")
    assert main(["triton-repo", str(ft_dir), "--out", str(out), "--tokenizer", str(tmp_path)]) == 2
    assert "holds no tokenizer" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda d: (d / "model.wte.bin").unlink(), "missing weight file {d}/model.wte.bin"),
        (
            lambda d: os.truncate(d / "model.layers.1.mlp.dense_4h_to_h.weight.0.bin", 100),
            "{d}/model.layers.1.mlp.dense_4h_to_h.weight.0.bin has 100 bytes, "
            "expected 65536 for shape (256, 128) float16",
        ),
        (
            lambda d: (d / "model.prefix_prompt.summary.weight.1.bin").unlink(),
            "missing weight file {d}/model.prefix_prompt.summary.weight.1.bin",
        ),
    ],
    ids=["base-file-missing", "base-file-cut-short", "task-file-missing"],
)
def test_a_conversion_missing_a_file_is_refused_as_ft_would_serve_on_without_it(
    tmp_path, capsys, damage, said
):
    """FT's loader only warns about a weight file it cannot open and serves on with whatever its
    buffer held (`loadWeightFromBin`), so a deployment of such a conversion answered wrongly."""
    ft_dir = _config_only_conversion(tmp_path / "conv", tp=2, dtype="fp16")
    damage(ft_dir)
    out = tmp_path / "out"
    assert main(["triton-repo", str(ft_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"ftprefix triton-repo: error: {said.format(d=ft_dir)}: "
        f"the conversion in {ft_dir} is incomplete or was changed; convert again"
    )
    assert not out.exists()


def test_triton_models_templates_are_what_the_generator_writes(tmp_path, tokenizer_dir):
    """`triton_models/` is the GPU repository for an example conversion (tp 2, fp16, two tasks),
    minus the tokenizer files; regenerate it with tools/regenerate_triton_models.py."""
    ft_dir = _config_only_conversion(tmp_path / "conv", tp=2, dtype="fp16")
    out = tmp_path / "gen"
    assert (
        main(["triton-repo", str(ft_dir.parent), "--out", str(out), "--tokenizer", str(tokenizer_dir)]) == 0
    )
    out = out / REPOSITORY_DIR
    generated = {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and "tokenizer" not in p.relative_to(out).parts
    }
    committed = {
        p.relative_to(EXAMPLE).as_posix(): p.read_bytes()
        for p in EXAMPLE.rglob("*")
        if p.is_file() and p.name != "README.md" and "__pycache__" not in p.parts
    }
    assert sorted(committed) == sorted(generated)
    for name, data in generated.items():
        assert committed[name] == data, f"triton_models/{name} differs from the generator's output"
