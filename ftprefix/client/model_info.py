"""What the client needs to know about the served model, read from its Triton model config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ftprefix import protocol
from ftprefix.client.errors import UnknownTaskError
from ftprefix.task_table import TaskTable


def _parameter(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get("parameters", {}).get(key)
    return None if value is None else str(value.get("string_value", ""))


@dataclass(frozen=True)
class ModelInfo:
    """One model's config as the client uses it (from `get_model_config(..., as_json=True)`)."""

    name: str
    inputs: frozenset[str]
    outputs: frozenset[str]
    decoupled: bool
    max_batch_size: int
    tasks: TaskTable = field(default_factory=TaskTable)
    instances: int = 1  # model instances (Triton's instance_group counts), each running its own batches
    vocab_size: int | None = None  # config.ini's, published by ftprefix's repositories
    end_id: int | None = None  # config.ini's end_id, published by ftprefix's repositories
    data_type: str | None = None  # the FT backend's `data_type` parameter (fp16 / fp32)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelInfo:
        config = config.get("config", config)
        table = _parameter(config, protocol.TASK_TABLE_PARAMETER)
        end_id = _parameter(config, protocol.END_ID_PARAMETER)
        vocab = _parameter(config, protocol.VOCAB_SIZE_PARAMETER)
        return cls(
            name=str(config.get("name", "")),
            inputs=frozenset(str(i["name"]) for i in config.get("input", [])),
            outputs=frozenset(str(o["name"]) for o in config.get("output", [])),
            decoupled=bool(config.get("model_transaction_policy", {}).get("decoupled", False)),
            max_batch_size=int(config.get("max_batch_size", 0)),
            tasks=TaskTable.from_json(table) if table else TaskTable(),
            end_id=int(end_id) if end_id else None,
            data_type=_parameter(config, protocol.DATA_TYPE_PARAMETER),
            instances=sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1,
            vocab_size=int(vocab) if vocab else None,
        )

    def task_id(self, name: str | None) -> int | None:
        """The id FT expects for task `name` (None = the base model); UnknownTaskError if not served."""
        if name is None:
            return None
        task = self.tasks.find(name)
        if task is None:
            raise UnknownTaskError(name, self.tasks.names)
        return task.id

    def serves(self, name: str | None) -> bool:
        return name is None or self.tasks.find(name) is not None
