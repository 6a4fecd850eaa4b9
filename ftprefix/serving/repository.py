"""Write a Triton model repository for a converted model: GPU (FT backend) or CPU twin (python backend).

Layout written (both targets):
  fastertransformer/config.pbtxt    FT's tensor interface; task table in parameter `prompt_learning_tasks`
  fastertransformer/1/              CPU: model.py (+ ftprefix_site.py); GPU: empty (the FT backend
                                    reads the weights from `model_checkpoint_path`)
  preprocessing/, postprocessing/   python models (ftprefix.text), the tokenizer files copied to
                                    1/tokenizer                                        (with a tokenizer)
  ensemble/                         text in, text out                                  (with a tokenizer)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ftprefix import layout, protocol
from ftprefix.errors import UserError
from ftprefix.serving import cpus, interface
from ftprefix.serving.batching import DEFAULT_MAX_QUEUE_DELAY_US, check_max_queue_delay
from ftprefix.serving.stub_args import ENGINE_THREADS_PARAMETER, SHARED_WEIGHTS_PARAMETER
from ftprefix.serving.text_models import NEWLINE_TOKEN_PARAMETER, TOKENIZER_PATH_PARAMETER, TOKENIZER_SUBDIR
from ftprefix.text import Tokenizer, copy_tokenizer_files, load_tokenizer

CPU, GPU = "cpu", "gpu"
VERSION = "1"
SITE_MODULE = "ftprefix_site.py"


@dataclass(frozen=True)
class RepositoryInfo:
    path: Path
    models: tuple[str, ...]  # in load order: dependencies before the ensemble
    ft_dir: Path  # the converted <tp>-gpu directory
    config: layout.ModelConfig
    tokenizer: Tokenizer | None = None  # what the text models read, when there are any


def ft_parameters(cfg: layout.ModelConfig, checkpoint_path: str) -> dict[str, str]:
    """The FT backend's parameters (libfastertransformer.cc ModelFactory) plus the task table."""
    return {
        "tensor_para_size": str(cfg.tensor_para_size),
        "pipeline_para_size": "1",
        protocol.DATA_TYPE_PARAMETER: cfg.weight_data_type,
        "model_type": "GPT-NeoX",
        "model_checkpoint_path": checkpoint_path,
        "enable_custom_all_reduce": "0",
        protocol.TASK_TABLE_PARAMETER: cfg.tasks.to_json(),
        protocol.END_ID_PARAMETER: str(cfg.end_id),
        protocol.VOCAB_SIZE_PARAMETER: str(cfg.vocab_size),
    }


def check_tokenizer_fits(tokenizer: Tokenizer, cfg: layout.ModelConfig, ft_dir: Path) -> None:
    """A tokenizer that gives ids the model has no embedding for is another model's: refused in one
    line before anything starts, not found out request by request (a 400 for every prompt with
    such a token, and text that happens to avoid them answered from the wrong token ids). A model
    may have more rows than its tokenizer has ids (Pythia pads 50277 to 50304), never fewer."""
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UserError(
            f"the tokenizer {tokenizer.path.parent} gives token ids up to {tokenizer.vocab_size - 1}, "
            f"and the model {ft_dir} has embeddings for ids 0 to {cfg.vocab_size - 1} only (config.ini "
            f"vocab_size {cfg.vocab_size}): it is another "
            "model's tokenizer; give the one this model was trained with"
        )


def _template(name: str) -> bytes:
    return resources.files("ftprefix.serving.templates").joinpath(name).read_bytes()


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    layout.atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)


def _write_python_model(repo: Path, name: str, template: str) -> None:
    version_dir = repo / name / VERSION
    _write(version_dir / "model.py", _template(template))
    _write(version_dir / SITE_MODULE, _template(SITE_MODULE))


def check_text_ensemble(tokenizer: bool, streaming: bool) -> None:
    """Refuse text models (a tokenizer) on a streaming model, where Triton has no ensemble."""
    if tokenizer and streaming:
        # A Triton ensemble cannot feed one step from a decoupled model and from another one, and
        # postprocessing needs both FT's output and each row's input/output lengths to read it.
        raise UserError(
            "a tokenizer adds the text ensemble, which Triton cannot build on a streaming (decoupled) "
            "model: tokenize in the client (Client(tokenizer=...), --tokenizer of ftprefix generate, or "
            "--openai-port of ftprefix serve) and leave the tokenizer out here, or serve without streaming"
        )


def write_repository(
    converted: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    target: str = CPU,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    streaming: bool = False,
    checkpoint_path: str | None = None,
    instances: int = 1,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
    newline_token: str | None = None,
    engine_threads: int = 1,
    shared_weights: str | None = None,
) -> RepositoryInfo:
    """Generate the repository. `checkpoint_path`: the `<tp>-gpu` directory as the server sees it
    (inside the container for the GPU server); default: its absolute path on this machine.
    `max_queue_delay_us`: the dynamic batcher's window (see `batching`). `newline_token`: rinna's
    convention for the text models (see `ftprefix.text`). `instances`: model instances (GPU: each on
    tp GPUs; CPU: each a process running the engine with `engine_threads` threads, see `cpus`, and
    mapping the base weights from `shared_weights` where given)."""
    if target not in (CPU, GPU):
        raise UserError(f"unknown target {target!r}: use {CPU!r} or {GPU!r}")
    cpus.check_counts(instances, engine_threads)
    check_max_queue_delay(max_queue_delay_us)
    ft_dir = layout.find_ft_dir(converted).resolve()
    cfg = layout.read_config(ft_dir)
    layout.check_weight_files(ft_dir, cfg)  # FT would serve on without a missing one
    tok = Path(tokenizer_dir) if tokenizer_dir is not None else None
    check_text_ensemble(tok is not None, streaming)
    if newline_token is not None and tok is None:
        raise UserError("--newline-token is for the text models: give --tokenizer HF_DIR too")
    # one line now for a tokenizer the python models could not read exactly, not a failed model load
    tokenizer = load_tokenizer(tok, newline_token=newline_token) if tok is not None else None
    if tokenizer is not None:
        check_tokenizer_fits(tokenizer, cfg, ft_dir)
    repo = Path(out)
    if repo.exists() and not repo.is_dir():
        raise UserError(f"{repo} exists and is not a directory; choose another --out")
    ft_model = repo / protocol.FT_MODEL
    backend = "python" if target == CPU else "fastertransformer"
    ckpt = checkpoint_path or str(ft_dir)
    params = ft_parameters(cfg, ckpt)
    if target == CPU:
        params[ENGINE_THREADS_PARAMETER] = str(engine_threads)
        if shared_weights is not None:
            params[SHARED_WEIGHTS_PARAMETER] = shared_weights
    ft_cfg = interface.fastertransformer_config(
        backend=backend,
        parameters=params,
        decoupled=streaming,
        instances=instances,
        max_queue_delay_us=max_queue_delay_us,
    )
    _write(ft_model / "config.pbtxt", interface.to_pbtxt(ft_cfg))
    (ft_model / VERSION).mkdir(parents=True, exist_ok=True)
    if target == CPU:
        _write_python_model(repo, protocol.FT_MODEL, "fastertransformer_cpu.py")
    else:
        _write(ft_model / VERSION / ".gitkeep", b"")
        stale = ft_model / VERSION / "model.py"
        stale.unlink(missing_ok=True)
    models = [protocol.FT_MODEL]
    if tok is not None:
        text_params = {TOKENIZER_PATH_PARAMETER: TOKENIZER_SUBDIR, protocol.END_ID_PARAMETER: str(cfg.end_id)}
        if newline_token is not None:
            text_params[NEWLINE_TOKEN_PARAMETER] = newline_token
        for name, make, template in (
            (interface.PREPROCESSING, interface.preprocessing_config, "preprocessing.py"),
            (interface.POSTPROCESSING, interface.postprocessing_config, "postprocessing.py"),
        ):
            _write(repo / name / "config.pbtxt", interface.to_pbtxt(make(text_params)))
            _write_python_model(repo, name, template)
            copy_tokenizer_files(tok, repo / name / VERSION / TOKENIZER_SUBDIR)
            models.append(name)
        ens = interface.ensemble_config({protocol.TASK_TABLE_PARAMETER: cfg.tasks.to_json()})
        _write(repo / protocol.ENSEMBLE_MODEL / "config.pbtxt", interface.to_pbtxt(ens))
        _write(repo / protocol.ENSEMBLE_MODEL / VERSION / ".gitkeep", b"")
        models.append(protocol.ENSEMBLE_MODEL)
    return RepositoryInfo(repo, tuple(models), ft_dir, cfg, tokenizer)


def refresh_task_table(repo: str | os.PathLike[str], cfg: layout.ModelConfig) -> list[str]:
    """Rewrite the task-table parameter in the repository's configs to match `cfg`.

    Returns the models whose config changed (and must be loaded again to be seen by clients).
    """
    changed = []
    table = cfg.tasks.to_json()
    for name in (protocol.FT_MODEL, protocol.ENSEMBLE_MODEL):
        path = Path(repo) / name / "config.pbtxt"
        if not path.is_file():
            continue
        model_cfg = interface.parse_pbtxt(path.read_text(encoding="utf-8"))
        if model_cfg.parameters[protocol.TASK_TABLE_PARAMETER].string_value == table:
            continue
        model_cfg.parameters[protocol.TASK_TABLE_PARAMETER].string_value = table
        _write(path, interface.to_pbtxt(model_cfg))
        changed.append(name)
    return changed
