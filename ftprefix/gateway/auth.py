"""API keys: who may call the gateway, and which models (tasks) each key may see and use.

The gateway is the tenant boundary: one base model serves many tenants, each through keys scoped
to its own tasks. Keys come from `--api-key` (repeatable) and `FTPREFIX_API_KEY`, which see every
model, and from `--api-keys FILE`, a JSON object `{"KEY": ["task", ...] | "*"}`, read again when the
file changes. Keys are kept and compared only as SHA-256 digests: the table holds no key, and the
time a lookup takes says nothing about how much of a wrong key was right (its digest shares no
usable prefix with a right one's), while thousands of tenants' keys cost one dict lookup. With no
key configured the API is open, as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ftprefix.errors import UserError

ENV_KEY = "FTPREFIX_API_KEY"
ALL = "*"


@dataclass(frozen=True)
class Scope:
    """The models one key may see and use; `models` None means every model."""

    models: frozenset[str] | None = None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


OPEN = Scope()  # no keys configured: everyone sees everything


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_keys_file(path: Path) -> dict[bytes, Scope]:
    """`{"KEY": ["task", ...] | "*"}` -> scopes by key digest, or UserError naming what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read the API keys file {path}: {exc}") from None
    if not isinstance(data, Mapping):
        raise UserError(f'{path}: the API keys file is a JSON object {{"KEY": ["task", ...] or "*"}}')
    scopes: dict[bytes, Scope] = {}
    for number, (key, models) in enumerate(data.items(), start=1):
        where = f"{path}: key number {number}"  # never the key itself
        if not isinstance(key, str) or not key:
            raise UserError(f"{where} is empty")
        if models == ALL:
            scopes[_digest(key)] = Scope()
        elif isinstance(models, list) and all(isinstance(m, str) and m for m in models):
            scopes[_digest(key)] = Scope(frozenset(models))
        else:
            raise UserError(f'{where}: give a list of model names or "*", got {models!r}')
    return scopes


class KeyRing:
    """The keys the gateway accepts; `scope_of(header)` is the scope of a request, or None if refused."""

    def __init__(self, keys: Iterable[str] = (), keys_file: str | os.PathLike[str] | None = None) -> None:
        self._fixed: dict[bytes, Scope] = {}
        for key in keys:
            if not key:
                raise UserError("--api-key must not be empty")
            self._fixed[_digest(key)] = Scope()
        self.keys_file = Path(keys_file) if keys_file is not None else None
        self._from_file: dict[bytes, Scope] = {}
        self._file_state: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        if self.keys_file is not None:
            self._from_file = parse_keys_file(self.keys_file)  # a bad file fails the start, in one line
            self._file_state = self._stat()

    @property
    def open(self) -> bool:
        return not self._fixed and self.keys_file is None

    def describe(self) -> str:
        """For the start-up line."""
        if self.open:
            return f"the API is open to anyone who reaches it (no --api-key, {ENV_KEY} or --api-keys)"
        parts = []
        if self._fixed:
            parts.append(f"{len(self._fixed)} key(s) for every model")
        if self.keys_file is not None:
            parts.append(f"{len(self._from_file)} key(s) from {self.keys_file}, read again when it changes")
        return "API keys required: " + ", ".join(parts)

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.keys_file is not None
        try:
            st = os.stat(self.keys_file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh(self) -> None:
        """Read the keys file again if it changed; a file that does not parse keeps the old keys."""
        state = self._stat()
        if state == self._file_state:
            return
        with self._lock:
            if state == self._file_state:
                return
            self._file_state = state
            try:
                self._from_file = parse_keys_file(self.keys_file) if state is not None else {}
            except UserError as exc:
                print(f"ftprefix openai: keeping the previous API keys: {exc}", file=sys.stderr, flush=True)

    def scope_of(self, authorization: str | None) -> Scope | None:
        """The scope of a request's `Authorization` header; None when the key is missing or wrong."""
        if self.open:
            return OPEN
        if self.keys_file is not None:
            self._refresh()
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        digest = _digest(key.strip())
        return self._fixed.get(digest) or self._from_file.get(digest)
