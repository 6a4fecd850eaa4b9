"""The task table: which prefix a task id names.

FasterTransformer numbers tasks by their position in config.ini (`[task_0]`, `[task_1]`, ...) and
requests carry that number in `prompt_learning_task_name_ids`. The same ordered table is written
to config.ini by the converter, published as JSON in the Triton model config for clients, looked
up by the CPU twin to refuse stale ids, and renumbered by `ftprefix tasks remove`. No torch here:
the client imports it.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload


@dataclass(frozen=True)
class Task:
    """One prefix-tuned task. `id` is its position in the table, the number FT expects."""

    id: int
    name: str
    prompt_length: int


@dataclass(frozen=True)
class Moved:
    """A task whose id changed when others were removed before it."""

    name: str
    old_id: int
    new_id: int


class TaskTable(Sequence[Task]):
    """An immutable, ordered table of tasks; ids are positions.

    Built from (name, prompt_length) pairs or `Task`s (whose ids are recomputed from their order).
    """

    __slots__ = ("_by_name", "_tasks")

    def __init__(self, tasks: Iterable[tuple[str, int] | Task] = ()) -> None:
        pairs = [(t.name, t.prompt_length) if isinstance(t, Task) else (str(t[0]), int(t[1])) for t in tasks]
        self._tasks = tuple(Task(i, name, length) for i, (name, length) in enumerate(pairs))
        self._by_name = {t.name: t for t in self._tasks}
        if len(self._by_name) != len(self._tasks):
            names = [name for name, _ in pairs]
            twice = next(name for name in names if names.count(name) > 1)
            raise ValueError(f"task {twice!r} appears twice in the task table")

    # -- Sequence ------------------------------------------------------------------------------
    @overload
    def __getitem__(self, index: int) -> Task: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Task]: ...
    def __getitem__(self, index: int | slice) -> Task | Sequence[Task]:
        return self._tasks[index]

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskTable) and self._tasks == other._tasks

    def __hash__(self) -> int:
        return hash(self._tasks)

    def __repr__(self) -> str:
        return f"TaskTable({[(t.name, t.prompt_length) for t in self._tasks]!r})"

    # -- lookups -------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [t.name for t in self._tasks]

    def find(self, name: str) -> Task | None:
        return self._by_name.get(name)

    def name_of(self, task_id: int) -> str | None:
        """The task `task_id` names now, or None when no task has that id."""
        return self._tasks[task_id].name if 0 <= task_id < len(self._tasks) else None

    def describe(self) -> str:
        """`0=taskA, 1=taskB` (or `none`), for messages."""
        return ", ".join(f"{t.id}={t.name}" for t in self._tasks) or "none"

    # -- edits (new tables; this one never changes) ------------------------------------------
    def appended(self, tasks: Iterable[tuple[str, int]]) -> TaskTable:
        """Existing ids stay; the new tasks get the next ids in the order given."""
        return TaskTable([*self._tasks, *tasks])

    def without(self, names: Sequence[str]) -> tuple[TaskTable, list[Moved]]:
        """The table without `names`, and the tasks whose ids moved down because of it."""
        gone = set(names)
        kept = TaskTable(t for t in self._tasks if t.name not in gone)
        moved = [
            Moved(t.name, self._by_name[t.name].id, t.id) for t in kept if self._by_name[t.name].id != t.id
        ]
        return kept, moved

    # -- the JSON published in the Triton model config ----------------------------------------
    def to_json(self) -> str:
        """`[{"id": 0, "name": "taskA", "prompt_length": 8}, ...]`, ordered by id."""
        return json.dumps(
            [{"id": t.id, "name": t.name, "prompt_length": t.prompt_length} for t in self._tasks]
        )

    @classmethod
    def from_json(cls, text: str) -> TaskTable:
        """Inverse of `to_json`; ids must be 0, 1, 2, ... (they are positions)."""
        entries = json.loads(text or "[]")
        if not isinstance(entries, list):
            raise ValueError("a task table is a JSON list")
        for position, entry in enumerate(entries):
            if int(entry["id"]) != position:
                raise ValueError(f"task table entry {position} has id {entry['id']}; ids are positions")
        return cls((str(e["name"]), int(e["prompt_length"])) for e in entries)


def closest_names(name: str, names: Sequence[str], limit: int = 3) -> list[str]:
    """Up to `limit` of `names` that look like `name` (for "did you mean" in errors)."""
    return difflib.get_close_matches(name, list(names), n=limit, cutoff=0.6)


def unknown_name_hint(name: str, names: Sequence[str], what: str = "task") -> str:
    """"did you mean ...?" and how many there are, never a wall of every name (thousands of tasks)."""
    close = closest_names(name, names)
    if not names:
        return f"there is no {what}"
    guess = f"did you mean {', '.join(repr(n) for n in close)}? " if close else ""
    listed = ", ".join(repr(n) for n in names[:5]) if len(names) <= 5 else ""
    return guess + (f"the {what}s are: {listed}" if listed else f"there are {len(names)} {what}s")
