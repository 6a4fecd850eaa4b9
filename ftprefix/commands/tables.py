"""Plain-text tables for what the commands print."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ftprefix.console import human_bytes


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())  # an empty last column: no trailing blanks
    return "\n".join(lines)


# more tasks than this are summarised in one row: convert and add print a summary, not a wall
TABLE_ROWS = 20


def written_tasks_table(reports: Sequence[Any], base: Any = None) -> str:
    """What convert / tasks add wrote per task (and for the base model, given a ConvertReport)."""
    shown = reports if len(reports) <= TABLE_ROWS else reports[: TABLE_ROWS - 1]
    rows: list[list[object]] = [
        [r.task_id, r.name, r.kind.replace("_", " "), r.prompt_length, human_bytes(r.bytes_written)]
        for r in shown
    ]
    if len(shown) < len(reports):
        rest = reports[len(shown) :]
        size = human_bytes(sum(r.bytes_written for r in rest))
        rows.append([f"{rest[0].task_id}..{rest[-1].task_id}", f"({len(rest):,} more tasks)", "", "", size])
    if base is not None:
        rows.append(
            ["", "(base model)", f"{base.base_files} files", "", human_bytes(base.base_bytes_written)]
        )
    return format_table(["id", "task", "from", "prefix length", "bytes written"], rows)
