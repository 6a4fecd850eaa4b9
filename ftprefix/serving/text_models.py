"""What the `preprocessing` and `postprocessing` Triton models share: their config parameters and the
tokenizer and end token they read from them.

Imported inside Triton's python backend stub, on the CPU server and in the GPU image, where only
ftprefix's core package is installed: the standard library and ftprefix.text only (no tritonclient).
"""

from __future__ import annotations

from typing import Any

from ftprefix import protocol
from ftprefix.serving import stub_args
from ftprefix.text import Tokenizer, load_tokenizer

TOKENIZER_PATH_PARAMETER = "tokenizer_path"  # relative to the model's version directory
NEWLINE_TOKEN_PARAMETER = "newline_token"  # rinna's convention (ftprefix.text)
TOKENIZER_SUBDIR = "tokenizer"


def tokenizer_and_end_id(args: dict[str, Any]) -> tuple[Tokenizer, int]:
    """From a python model's `initialize(args)`: its tokenizer, and the end token FT fills rows with
    (the `end_id` parameter, config.ini's; else the tokenizer's eos)."""
    params = stub_args.parameters(args)
    path = stub_args.stub_path(params.get(TOKENIZER_PATH_PARAMETER) or TOKENIZER_SUBDIR)
    if not path.is_absolute():
        path = stub_args.stub_path(args["model_repository"]) / args["model_version"] / path
    with stub_args.errors_shown():
        tokenizer = load_tokenizer(path, newline_token=params.get(NEWLINE_TOKEN_PARAMETER) or None)
    end_id = params.get(protocol.END_ID_PARAMETER)
    return tokenizer, int(end_id) if end_id else int(tokenizer.eos_id or 0)
