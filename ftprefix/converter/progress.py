"""Progress bar on an interactive terminal only: CI logs and pipes stay quiet."""

from __future__ import annotations

import os
import sys
from typing import Any


def show_progress() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress_bar(total: int, desc: str, enabled: bool | None = None) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="tensor",
        file=sys.stderr,
        disable=not (show_progress() if enabled is None else enabled),
    )
