"""What verify says while it works. On CPU a model of billions of parameters takes minutes to read
and a minute or more per task to check, with nothing on the screen but the final table."""

from __future__ import annotations

import time
from collections.abc import Callable

Say = Callable[[str], None]


class Progress:
    """Lines for `say` (nothing where it is None): each stage done, with its seconds, and each
    check done, as "N of TOTAL"."""

    def __init__(self, say: Say | None) -> None:
        self._say = say
        self._since = time.monotonic()
        self.total = 0
        self.done = 0

    def _seconds(self) -> float:
        now = time.monotonic()
        seconds, self._since = now - self._since, now
        return seconds

    def stage(self, done: str, then: str = "") -> None:
        """`done` took the time since the last line; `then` says what comes next."""
        seconds = self._seconds()
        if self._say is not None:
            self._say(f"{done} in {seconds:.1f} s" + (f"; {then}" if then else ""))

    def counted(self, name: str, what: str = "checked") -> None:
        """One more of `total` done: "NAME: WHAT (N of TOTAL, S s)"."""
        self.done += 1
        seconds = self._seconds()
        if self._say is not None:
            self._say(f"{name}: {what} ({self.done} of {self.total}, {seconds:.1f} s)")
