"""`ftprefix triton-repo DIR --out REPO`: write the Triton model repository for the GPU server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ftprefix.commands.options import add_newline_token_option, add_queue_delay_option

DEFAULT_CONTAINER_MODEL_ROOT = "/ftprefix/model"  # where docker/start-triton.sh links the conversion
COMPOSE_ENV = "compose.env"  # docker compose --env-file REPO/compose.env -f docker/docker-compose.yml up


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "triton-repo",
        help="write the Triton model repository (FasterTransformer backend for the GPU, or the CPU twin)",
        description=(
            "Write fastertransformer/config.pbtxt (tensor_para_size, data_type and model_checkpoint_path "
            "matching the conversion, task table in the parameter 'prompt_learning_tasks') and, with "
            "--tokenizer, preprocessing / postprocessing / ensemble; for the GPU also compose.env, the "
            "variables docker/docker-compose.yml needs. After `ftprefix tasks add`, run this again and "
            "load the model again on the running server: "
            "curl -X POST http://HOST:8000/v2/repository/models/fastertransformer/load "
            "(then .../ensemble/load)."
        ),
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="converted model (<tp>-gpu directory or its parent)")
    p.add_argument("--out", type=Path, required=True, help="model repository to write")
    p.add_argument("--tokenizer", type=Path, metavar="HF_DIR", help="Hugging Face tokenizer directory")
    add_newline_token_option(p)
    p.add_argument(
        "--target",
        choices=("gpu", "cpu"),
        default="gpu",
        help="gpu: FasterTransformer backend (default); cpu: python-backend twin running ftprefix.engine",
    )
    p.add_argument(
        "--checkpoint-path",
        help=(
            "the <tp>-gpu directory as the server sees it (default for gpu: "
            f"{DEFAULT_CONTAINER_MODEL_ROOT}/<tp>-gpu, where the GPU image links the mounted conversion; "
            "for cpu: its absolute path here)"
        ),
    )
    p.add_argument(
        "--instances",
        type=int,
        default=1,
        metavar="N",
        help="gpu: model instances, each on tensor_para_size GPUs; the server needs N x tp GPUs (default 1)",
    )
    p.add_argument(
        "--streaming",
        action="store_true",
        help="decoupled fastertransformer model (token streaming); needs the GPU image built from docker/",
    )
    add_queue_delay_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ftprefix import layout
    from ftprefix.serving import repository

    ft_dir = layout.find_ft_dir(args.dir)
    checkpoint = args.checkpoint_path
    if checkpoint is None and args.target == "gpu":
        checkpoint = f"{DEFAULT_CONTAINER_MODEL_ROOT}/{ft_dir.name}"
    info = repository.write_repository(
        ft_dir,
        args.out,
        target=args.target,
        tokenizer_dir=args.tokenizer,
        streaming=args.streaming,
        checkpoint_path=checkpoint,
        instances=args.instances,
        max_queue_delay_us=args.max_queue_delay_us,
        newline_token=args.newline_token,
    )
    tasks = ", ".join(info.config.tasks.names) or "none"
    where = checkpoint or info.ft_dir
    print(f"wrote {', '.join(info.models)} to {info.path} (model_checkpoint_path {where}; tasks: {tasks})")
    if info.tokenizer is not None:
        print(f"text models tokenize with {info.tokenizer.description}")
    if args.target == "gpu":
        tp = info.config.tensor_para_size
        gpus = args.instances * tp
        env = {
            "FTPREFIX_MODEL_DIR": str(Path(args.dir).resolve()),
            "FTPREFIX_TRITON_REPO": str(info.path.resolve()),
            "FTPREFIX_GPUS": str(gpus),
            "FTPREFIX_BASE_MODEL": info.config.model_name,  # the OpenAI API's name for the base model
        }
        if args.tokenizer is not None:
            env["FTPREFIX_TOKENIZER_DIR"] = str(args.tokenizer.resolve())
        if args.newline_token is not None:
            env["FTPREFIX_NEWLINE_TOKEN"] = args.newline_token  # for the OpenAI gateway's profile
        layout.atomic_write_bytes(
            info.path / COMPOSE_ENV, "".join(f"{k}={v}\n" for k, v in env.items()).encode("utf-8")
        )
        print(
            f"the server needs {gpus} GPU(s) ({args.instances} instance(s) x tp {tp}): "
            f"docker compose --env-file {info.path / COMPOSE_ENV} -f docker/docker-compose.yml up"
        )
    if args.streaming:
        print(
            "ftprefix triton-repo: note: streaming needs the GPU image built from this repository's docker/ "
            "(upstream FasterTransformer's GPT-NeoX streaming returns wrong tokens, FT issue #704); "
            "check a server with `ftprefix verify --url`",
            file=sys.stderr,
        )
    return 0
