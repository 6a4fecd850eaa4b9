"""What Triton's python backend hands a model's `initialize(args)`, read one way by every ftprefix
python model (the CPU twin's `fastertransformer`, and `preprocessing`/`postprocessing` on the CPU
server and in the GPU image). Standard library only: it runs inside the stub.

Paths need care. The stub embeds Python (pybind11's `scoped_interpreter`) without applying the
locale of the environment, and PYTHONUTF8 is not read there: its LC_CTYPE stays "C" and its file
system encoding is ASCII whatever LANG says (seen with tritonserver 2.51's stub and Python 3.11).
Triton passes the model configuration as UTF-8 JSON, so a model directory such as
/home/田中/model arrives as text the stub cannot name on disk, and every lookup of it fails as if
nothing were there. `stub_path` turns such text into the name whose bytes are the file's, the way
the stub decodes file names itself (ASCII with surrogateescape); where the file system encoding is
UTF-8 it changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The CPU twin's own parameters and files, written by repository.py and read by triton_model.py
# (here, not in repository.py: that one imports tritonclient and grpc, about 0.1 s more of every
# engine process's start). Its threads per instance:
ENGINE_THREADS_PARAMETER = "engine_threads"
# where its instances map the base weights from (engine/shared_weights.py)
SHARED_WEIGHTS_PARAMETER = "shared_weights"
# In its model directory, a file the CPU twin holds a shared lock on while it streams (execute on a
# decoupled model): a stream's request counts as done at Triton from its start, so a stopping
# server learns from this, not from Triton, that no stream is left (EmbeddedServer.stop)
STREAMS_LOCK = "streams-in-flight.lock"


def parameters(args: dict[str, Any]) -> dict[str, str]:
    """The model's config.pbtxt `parameters`, name -> string value."""
    config = json.loads(args["model_config"])
    return {k: str(v.get("string_value", "")) for k, v in config.get("parameters", {}).items()}


def stub_path(text: str) -> Path:
    """A path Triton passed as text, as this interpreter's file functions must be given it."""
    return Path(os.fsdecode(text.encode("utf-8")))


def shown(text: str) -> str:
    """A text that holds a `stub_path`, as the person who named the path wrote it."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@contextlib.contextmanager
def errors_shown() -> Iterator[None]:
    """What the block raises, with a message the stub can pass on to Triton: a message that holds
    a `stub_path` cannot be encoded as UTF-8, and the stub that fails to send it is itself taken
    down ("Stub process ... is not healthy"), the real error lost."""
    try:
        yield
    except Exception as exc:
        text = str(exc)
        readable = shown(text)
        if readable == text:
            raise
        try:
            again = type(exc)(readable)
        except Exception:  # an exception type that takes other arguments than a message
            again = RuntimeError(f"{type(exc).__name__}: {readable}")
        raise again from None
