"""What the sync and async clients share apart from their transport."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from ftprefix import protocol
from ftprefix.client.errors import FtprefixClientError, StreamingNotSupportedError
from ftprefix.client.model_info import ModelInfo
from ftprefix.client.plan import Plan, Prompt, Stop
from ftprefix.client.tokenizer import ClientTokenizer
from ftprefix.client.types import SamplingParams

DEFAULT_URL = "localhost:8001"
DEFAULT_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 5.0
TASK_TABLE_TTL_S = 5.0


def normalize_url(url: str) -> str:
    """`host:port` as gRPC wants it; a `grpc://` scheme is accepted and dropped."""
    url = url.strip()
    for scheme in ("grpc://", "grpcs://"):
        if url.startswith(scheme):
            url = url[len(scheme) :]
    if url.startswith(("http://", "https://")):
        raise FtprefixClientError(
            f"{url} is an HTTP URL; the client speaks gRPC: pass host:port of the gRPC endpoint "
            "(e.g. localhost:8001)"
        )
    if not url or ":" not in url:
        raise FtprefixClientError(f"server URL {url!r} needs a port: pass host:port, e.g. localhost:8001")
    return url.rstrip("/")


class ClientBase:
    """Settings, caches and request planning common to `Client` and `AsyncClient`."""

    def __init__(
        self,
        url: str,
        tokenizer: str | os.PathLike[str] | ClientTokenizer | None,
        timeout: float | None,
        connect_retries: int,
        retry_delay: float,
        task_table_ttl: float | None,
    ) -> None:
        self.url = normalize_url(url)
        if tokenizer is None or isinstance(tokenizer, ClientTokenizer):
            self.tokenizer = tokenizer
        else:
            self.tokenizer = ClientTokenizer(tokenizer)
        self.timeout = timeout
        self.connect_retries = connect_retries
        self.retry_delay = retry_delay
        self.task_table_ttl = task_table_ttl
        self._model_info: ModelInfo | None = None
        self._model_info_read_at = 0.0
        self._ensemble_info: ModelInfo | None = None
        self._ensemble_checked = False

    def _info_is_stale(self, refresh: bool) -> bool:
        # Task ids shift down when a task is removed and the server reloads: an old table could
        # send a row to the wrong prefix, so it is read again after `task_table_ttl` seconds.
        if self._model_info is None or refresh:
            return True
        ttl = self.task_table_ttl
        return ttl is not None and time.monotonic() - self._model_info_read_at > ttl

    def _store_info(self, info: ModelInfo) -> ModelInfo:
        self._model_info, self._model_info_read_at = info, time.monotonic()
        return info

    def _needs_ensemble(self, prompts: Sequence[Prompt]) -> bool:
        return self.tokenizer is None and any(isinstance(p, str) for p in prompts)

    def _plan(
        self,
        info: ModelInfo,
        ensemble: ModelInfo | None,
        prompts: Sequence[Prompt],
        tasks: str | Sequence[str | None] | None,
        params: SamplingParams,
        stop: Sequence[Stop] | None,
    ) -> Plan:
        use_ensemble = ensemble is not None and self._needs_ensemble(prompts)
        plan = Plan.build(prompts, tasks, params, stop, info, self.tokenizer, use_ensemble)
        if use_ensemble:
            assert ensemble is not None
            # the ensemble has its own inputs/outputs but serves the fastertransformer model's tasks
            plan.info = ModelInfo(
                ensemble.name,
                ensemble.inputs,
                ensemble.outputs,
                ensemble.decoupled,
                ensemble.max_batch_size,
                info.tasks,
            )
        return plan

    @staticmethod
    def _check_streamable(info: ModelInfo, plan: Plan) -> None:
        if plan.text_prompts is not None:
            raise StreamingNotSupportedError(
                "streaming goes to the fastertransformer model: pass tokenizer=HF_MODEL_DIR (--tokenizer)"
            )
        if not info.decoupled:
            raise StreamingNotSupportedError(
                f"model {info.name!r} is not decoupled, so it answers once per request: use generate(), "
                "or start the server with streaming (ftprefix serve --streaming)"
            )

    @staticmethod
    def _known(info: ModelInfo, tasks: str | Sequence[str | None] | None) -> bool:
        names = [tasks] if tasks is None or isinstance(tasks, str) else list(tasks)
        return all(n is None or info.tasks.find(n) is not None for n in names)

    @staticmethod
    def _outputs(info: ModelInfo) -> list[str]:
        if info.name == protocol.ENSEMBLE_MODEL or protocol.TEXT_OUTPUT in info.outputs:
            return [n for n in (protocol.TEXT_OUTPUT, protocol.SEQUENCE_LENGTH) if n in info.outputs]
        return [protocol.OUTPUT_IDS, protocol.SEQUENCE_LENGTH]
