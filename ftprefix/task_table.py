"""The task table: which prefix a task id names.

FasterTransformer numbers tasks by their position in config.ini (`[task_0]`, `[task_1]`, ...) and
requests carry only that number in `prompt_learning_task_name_ids`; its GPU backend never sees a
task name. So ids never move: removing a task leaves its slot in the table as a *retired* slot
(FT still loads it, from small placeholder files, under a name no user task can take), adding a
task appends, and only `ftprefix tasks compact` renumbers. A client holding an old table can then
never reach another task's prefix: the ids it knows still mean what they meant, and a retired id
means no task at all (the CPU twin refuses it; the GPU serves the placeholder).

The same ordered table is written to config.ini by the converter, published as JSON in the Triton
model config for clients, and looked up by the CPU twin. No torch here: the client imports it.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

# A retired slot's name: this prefix and the slot's id. User task names may not start with it.
RETIRED_PREFIX = "_retired."
# A retired slot's prefix length: FT reads its (zero) placeholder files like any prefix.
RETIRED_PROMPT_LENGTH = 1


def is_retired_name(name: str) -> bool:
    return name.startswith(RETIRED_PREFIX)


@dataclass(frozen=True)
class Task:
    """One slot of the table. `id` is its position, the number FT expects. A retired slot (a removed
    task) keeps its id; `removed` is the name it had, where config.ini records it."""

    id: int
    name: str
    prompt_length: int
    removed: str | None = None

    @property
    def retired(self) -> bool:
        return is_retired_name(self.name)


Slot = tuple[str, int] | tuple[str, int, str | None] | Task


class TaskTable(Sequence[Task]):
    """An immutable, ordered table of slots; ids are positions. Iterating gives every slot, retired
    ones included (FT loads them all); `live`, `names` and `find` see the tasks that serve requests.

    Built from (name, prompt_length[, removed]) tuples or `Task`s (ids recomputed from their order).
    """

    __slots__ = ("_by_name", "_live", "_tasks")

    def __init__(self, tasks: Iterable[Slot] = ()) -> None:
        self._tasks = tuple(
            Task(i, t.name, t.prompt_length, t.removed)
            if isinstance(t, Task)
            else Task(i, str(t[0]), int(t[1]), t[2] if len(t) > 2 else None)  # type: ignore[misc]
            for i, t in enumerate(tasks)
        )
        self._live = tuple(t for t in self._tasks if not t.retired)
        self._by_name = {t.name: t for t in self._live}
        if len(self._by_name) != len(self._live):
            names = [t.name for t in self._live]
            twice = next(name for name in names if names.count(name) > 1)
            raise ValueError(f"task {twice!r} appears twice in the task table")
        for t in self._tasks:
            if t.retired and t.name != retired_name(t.id):
                raise ValueError(
                    f"slot {t.id} is named {t.name!r}; a retired slot {t.id} is {retired_name(t.id)!r}"
                )

    # -- Sequence (every slot) -------------------------------------------------------------------
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

    # -- lookups (live tasks) -------------------------------------------------------------------
    @property
    def live(self) -> tuple[Task, ...]:
        """The tasks that serve requests, by id."""
        return self._live

    @property
    def retired(self) -> tuple[Task, ...]:
        return tuple(t for t in self._tasks if t.retired)

    @property
    def names(self) -> list[str]:
        """The live tasks' names, by id."""
        return [t.name for t in self._live]

    def find(self, name: str) -> Task | None:
        """The live task of that name; a retired slot is never found (it is no task)."""
        return self._by_name.get(name)

    def slot(self, task_id: int) -> Task | None:
        """Whatever slot `task_id` is (live or retired), or None beyond the table."""
        return self._tasks[task_id] if 0 <= task_id < len(self._tasks) else None

    def name_of(self, task_id: int) -> str | None:
        """The live task `task_id` names now, or None (no such id, or a retired one)."""
        task = self.slot(task_id)
        return None if task is None or task.retired else task.name

    def describe(self, limit: int = 8) -> str:
        """`0=taskA, 1=taskB, ...` for messages: the first few and a count, never a wall."""
        shown = ", ".join(f"{t.id}={t.name}" for t in self._live[:limit])
        more = f" and {len(self._live) - limit} more" if len(self._live) > limit else ""
        return (shown + more) or "none"

    # -- edits (new tables; this one never changes) ------------------------------------------
    def appended(self, tasks: Iterable[tuple[str, int]]) -> TaskTable:
        """Existing ids stay; the new tasks get the next ids in the order given (retired ids are
        never given again)."""
        return TaskTable([*self._tasks, *tasks])

    def retire(self, names: Sequence[str]) -> TaskTable:
        """The table with these live tasks' slots retired: every other id stays as it is."""
        gone = set(names)
        return TaskTable(
            (retired_name(t.id), RETIRED_PROMPT_LENGTH, t.name) if t.name in gone else t for t in self._tasks
        )

    def replaced_by(self, tasks: Sequence[tuple[str, int]]) -> TaskTable:
        """The table of a conversion that replaces this one with `tasks` (name, prompt length): a task
        that remains keeps its id, one that is gone leaves a retired slot, retired slots stay, and
        new tasks come after them all."""
        lengths = dict(tasks)
        slots: list[Slot] = []
        for t in self._tasks:
            if t.retired:
                slots.append(t)
            elif t.name in lengths:
                slots.append((t.name, lengths[t.name]))
            else:
                slots.append((retired_name(t.id), RETIRED_PROMPT_LENGTH, t.name))
        kept = set(self._by_name)
        return TaskTable([*slots, *((name, length) for name, length in tasks if name not in kept)])

    def compacted(self) -> tuple[TaskTable, list[tuple[str, int, int]]]:
        """The live tasks renumbered from 0 and (name, old id, new id) for each that moved."""
        table = TaskTable(self._live)
        moved = [
            (t.name, t.id, table._by_name[t.name].id) for t in self._live if table._by_name[t.name].id != t.id
        ]
        return table, moved

    # -- the JSON published in the Triton model config ----------------------------------------
    def to_json(self) -> str:
        """`[{"id": 0, "name": "taskA", "prompt_length": 8}, ...]`, every slot, ordered by id (a
        retired slot by its reserved name; which task it was stays out of what clients read)."""
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


def retired_name(task_id: int) -> str:
    return f"{RETIRED_PREFIX}{task_id}"


# Beyond this many names, similarity scoring (difflib) costs tens of milliseconds per error: a
# 404 for an unknown model must stay cheap, so larger tables suggest names sharing a long prefix.
SCORED_NAMES = 1000


def closest_names(name: str, names: Sequence[str], limit: int = 3) -> list[str]:
    """Up to `limit` of `names` that look like `name` (for "did you mean" in errors)."""
    if len(names) <= SCORED_NAMES:
        return difflib.get_close_matches(name, list(names), n=limit, cutoff=0.6)
    stem = name[: max(1, len(name) * 2 // 3)]
    return [n for n in names if n.startswith(stem)][:limit]


def unknown_name_hint(name: str, names: Sequence[str], what: str = "task") -> str:
    """ "did you mean ...?" and how many there are, never a wall of every name (thousands of tasks)."""
    if not names:
        return f"there is no {what}"
    close = closest_names(name, names)
    guess = f"did you mean {', '.join(repr(n) for n in close)}? " if close else ""
    listed = ", ".join(repr(n) for n in names) if len(names) <= 5 else ""
    return guess + (f"the {what}s are: {listed}" if listed else f"there are {len(names)} {what}s")


def summary(names: Sequence[str], limit: int = 5) -> str:
    """`a, b, c` or `a, b, c, d, e and 995 more`: a bounded line for any number of names."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
