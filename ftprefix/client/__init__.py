"""gRPC client for an ftprefix / FasterTransformer server: pick the prefix-tuned task by name.

    from ftprefix.client import Client

    with Client("localhost:8001", tokenizer="path/to/hf_model") as client:
        print(client.generate("Hello", task="taskA", max_new_tokens=16).text)

No torch here: tokenising uses the `tokenizers` library, transport uses tritonclient[grpc]. Names
are imported on first use, so `ftprefix.client.errors` stays cheap for the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ftprefix.client.aio import AsyncClient
    from ftprefix.client.errors import (
        FtprefixClientError,
        InferenceError,
        InvalidRequestError,
        MalformedResponseError,
        ModelNotReadyError,
        RequestTimeoutError,
        ServerUnavailableError,
        StreamingNotSupportedError,
        TaskTableChangedError,
        UnknownTaskError,
    )
    from ftprefix.client.sync import Client
    from ftprefix.client.types import Completion, FinishReason, GenerateOptions, GenerationParams, StreamChunk
    from ftprefix.task_table import Task, TaskTable

_HOMES = {
    "AsyncClient": "ftprefix.client.aio",
    "Client": "ftprefix.client.sync",
    "Completion": "ftprefix.client.types",
    "FinishReason": "ftprefix.client.types",
    "GenerateOptions": "ftprefix.client.types",
    "GenerationParams": "ftprefix.client.types",
    "StreamChunk": "ftprefix.client.types",
    "Task": "ftprefix.task_table",
    "TaskTable": "ftprefix.task_table",
    **dict.fromkeys(
        (
            "FtprefixClientError",
            "InferenceError",
            "InvalidRequestError",
            "MalformedResponseError",
            "ModelNotReadyError",
            "RequestTimeoutError",
            "ServerUnavailableError",
            "StreamingNotSupportedError",
            "TaskTableChangedError",
            "UnknownTaskError",
        ),
        "ftprefix.client.errors",
    ),
}
__all__ = [
    "AsyncClient",
    "Client",
    "Completion",
    "FinishReason",
    "FtprefixClientError",
    "GenerateOptions",
    "GenerationParams",
    "InferenceError",
    "InvalidRequestError",
    "MalformedResponseError",
    "ModelNotReadyError",
    "RequestTimeoutError",
    "ServerUnavailableError",
    "StreamChunk",
    "StreamingNotSupportedError",
    "Task",
    "TaskTable",
    "TaskTableChangedError",
    "UnknownTaskError",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
