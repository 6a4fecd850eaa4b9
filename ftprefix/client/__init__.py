"""gRPC client for an ftprefix / FasterTransformer server: pick the prefix-tuned task by name.

    from ftprefix.client import Client

    with Client("localhost:8001", tokenizer="path/to/hf_model") as client:
        print(client.generate("Hello", task="taskA", max_new_tokens=16).text)

No torch here: tokenising is ftprefix.text (tokenizers, sentencepiece), transport tritonclient[grpc].
"""

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
