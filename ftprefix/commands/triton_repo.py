"""`ftprefix triton-repo CONVERTED --out DIR`: the deployment directory `docker compose up` serves."""

from __future__ import annotations

import argparse
import shlex
import sys

from ftprefix import model_dirs
from ftprefix.commands.options import (
    UPDATES_NOTE,
    add_newline_token_option,
    add_queue_delay_option,
    add_wait_option,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from pathlib import Path

    p = subparsers.add_parser(
        "triton-repo",
        help="write a deployment directory: Triton model repository, compose files, the GPU image's sources",
        description=(
            "Write DIR for `cd DIR && docker compose up`: the Triton model repository (FasterTransformer "
            "backend, tensor_para_size, data_type and model_checkpoint_path matching the conversion, the "
            "task table in the parameter 'prompt_learning_tasks'; with --tokenizer also preprocessing, "
            "postprocessing and ensemble), compose.yaml (GPU; --profile openai adds the OpenAI API), "
            "compose.cpu.yaml (the same on CPU), .env (every setting), and image/, the build context of "
            "the images with this very ftprefix as a wheel. After `ftprefix tasks add`, run this again "
            "(`ftprefix triton-repo --out DIR` is enough): it updates DIR in place with the settings "
            "DIR was written with (the options you give change them), keeps your .env edits, says "
            "what changed; then load the model again on the running server."
        ),
    )
    p.add_argument(
        "dir",
        type=Path,
        nargs="?",
        metavar="CONVERTED",
        help=(
            "converted model (<tp>-gpu directory or its parent); left out, the one the deployment --out "
            "serves (FTPREFIX_MODEL_DIR in its .env)"
        ),
    )
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="deployment directory to write or update"
    )
    tokenizer = p.add_mutually_exclusive_group()
    tokenizer.add_argument(
        "--tokenizer",
        type=model_dirs.hf_dir,
        metavar="HF_DIR",
        help=f"Hugging Face tokenizer directory (default: none{UPDATES_NOTE})",
    )
    tokenizer.add_argument(
        "--no-tokenizer",
        action="store_true",
        help="write the deployment without the tokenizer it was written with (no text models, no OpenAI API)",
    )
    add_newline_token_option(p, updates=True)
    p.add_argument(
        "--target",
        choices=("gpu", "cpu"),
        help=(
            "gpu: FasterTransformer backend; cpu: `docker compose up` serves on CPU (ftprefix "
            "serve), and the model repository is the python-backend twin running ftprefix.engine "
            f"(default gpu{UPDATES_NOTE})"
        ),
    )
    p.add_argument(
        "--instances",
        type=int,
        metavar="N",
        help=(
            "gpu: model instances, each on tensor_para_size GPUs; compose reserves N x tp GPUs "
            f"(default 1{UPDATES_NOTE})"
        ),
    )
    p.add_argument(
        "--streaming",
        action=argparse.BooleanOptionalAction,
        help=(
            "decoupled fastertransformer model (token streaming; the image carries FT's streaming fix); "
            "a tokenizer then serves the OpenAI API only (Triton has no text ensemble on such a model) "
            f"(default: not streaming{UPDATES_NOTE})"
        ),
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="rewrite a deployment another ftprefix version wrote, or files you changed in it",
    )
    add_queue_delay_option(p, updates=True)
    add_wait_option(p, changing="DIR or the converted model")
    p.set_defaults(func=run)


def _summary(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def run(args: argparse.Namespace) -> int:
    from ftprefix import protocol
    from ftprefix.commands.options import check_wait
    from ftprefix.serving import deployment

    report = deployment.write_deployment(
        args.dir,
        args.out,
        target=args.target,
        tokenizer_dir=args.tokenizer,
        no_tokenizer=args.no_tokenizer,
        streaming=args.streaming,
        instances=args.instances,
        max_queue_delay_us=args.max_queue_delay_us,
        newline_token=args.newline_token,
        force=args.force,
        wait=check_wait(args.wait),
    )
    info, settings, out = report.info, report.settings, report.path
    tasks = info.config.tasks.names
    verb = "wrote" if report.created else "updated"
    print(
        f"{verb} {out}: models {', '.join(info.models)} for {info.ft_dir} "
        f"({len(tasks)} task(s){': ' + _summary(tasks) if tasks else ''})"
    )
    if not report.created:
        print(
            f"  {len(report.written)} file(s) changed"
            + (f" ({_summary(report.written)})" if report.written else "")
            + (f", {len(report.removed)} removed ({_summary(report.removed)})" if report.removed else "")
            + f", {report.unchanged} unchanged"
        )
        if report.kept:
            print(f"  settings as before: {', '.join(report.kept)} (options given again change them)")
        for key, old, new in report.env_changed:
            print(f"  .env: {key} {'(hidden)' if key in deployment.SECRET_ENV else repr(old)} -> {new!r}")
        for key, yours, ours in report.env_kept:
            if key in deployment.SECRET_ENV:
                print(f"  .env: kept your {key}")
            else:
                print(f"  .env: kept your {key}={yours!r} (this run would write {ours!r})")
    if info.tokenizer is not None or settings.tokenizer:
        print(f"  tokenizer: {deployment.TOKENIZER_DIR}/ (the OpenAI API's)", end="")
        print(f"; text models tokenize with {info.tokenizer.description}" if info.tokenizer else "")
    gpus = settings.instances * settings.tensor_para_size
    cd = f"cd {shlex.quote(str(out))}"  # a command to paste into a shell, whatever the name holds
    if settings.target == "gpu":
        print(
            f"  GPU server: {cd} && docker compose up   ({gpus} GPU(s): {settings.instances} "
            f"instance(s) x tp {settings.tensor_para_size}; the first run builds the image)"
        )
        print(f"  on CPU instead: {cd} && docker compose -f compose.cpu.yaml up")
    else:
        print(f"  CPU server: {cd} && docker compose up")
    if settings.tokenizer:
        print(f"  with the OpenAI API on port {report.openai_port}: add --profile openai")
    else:
        print("  the OpenAI API (--profile openai) needs a tokenizer: run again with --tokenizer HF_DIR")
    reload = [name for name in report.written if name.endswith("config.pbtxt")]
    if not report.created and reload and settings.target == "gpu":
        models = sorted({name.split("/")[1] for name in reload})
        order = [m for m in info.models if m in models] or models
        loads = " && ".join(f"curl -sf -X POST localhost:8000/v2/repository/models/{m}/load" for m in order)
        print(f"  a running GPU server picks the change up once the models load again: {loads}")
    elif not report.created and reload:
        # ftprefix serve watches the conversion's config.ini, and reads the rest when it starts
        restart = f"{cd} && docker compose restart"
        print(f"  a running CPU server reads new tasks by itself; for the rest: {restart}")
    if settings.streaming and settings.target == "gpu":
        print(
            "ftprefix triton-repo: note: streaming needs the image built from image/ (upstream "
            "FasterTransformer's GPT-NeoX streaming returns wrong tokens, FT issue #704); check a server "
            f"with `ftprefix verify --url`; model {protocol.FT_MODEL} is decoupled",
            file=sys.stderr,
        )
    return 0
