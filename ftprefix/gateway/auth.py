"""API keys: who may call the gateway, which models (tasks) each key may use, and its limits.

The gateway is the tenant boundary: one base model serves many tenants, each through keys scoped
to its own tasks. Keys come from `--api-key` (repeatable) and `FTPREFIX_API_KEY`, which see every
model, and from `--api-keys FILE`, a JSON object read again when the file changes:

    {"KEY": ["task", ...] | "*" | {"tenant": "acme", "tasks": [...] | "*", "max_concurrent": 4,
                                    "requests_per_minute": 600, "tokens_per_minute": 100000,
                                    "max_tokens": 512, "weight": 2}}

Keys are kept and compared only as SHA-256 digests: the table holds no key, and the time a lookup
takes says nothing about how much of a wrong key was right (its digest shares no usable prefix with
a right one's), while thousands of tenants' keys cost one dict lookup. With no key configured the
API is open. A tenant's name labels its metrics and shares its fair share of the server between
its keys; a key without one is named by its place in the file (`key-3`), never by the key. A
tenant's `weight` (default 1) is how many of its waiting requests are admitted per turn
(admission.py): a tenant's, not a key's, so its keys give the same one or leave it out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ftprefix.errors import UserError

ENV_KEY = "FTPREFIX_API_KEY"
ALL = "*"
OPEN_TENANT = "open"  # the tenant of every request while no key is configured
ADMIN_TENANT = "api-key"  # the tenant of --api-key / FTPREFIX_API_KEY
LIMITS = ("max_concurrent", "requests_per_minute", "tokens_per_minute", "max_tokens")
SETTINGS = ("tenant", "tasks", *LIMITS, "weight")
MAX_WEIGHT = 1000  # turns of this many requests still end, so every other tenant's come round
_TENANT = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # a metrics label value anyone can read safely
log = logging.getLogger("ftprefix.gateway")


@dataclass(frozen=True)
class Scope:
    """The models one key may see and use; `models` None means every model."""

    models: frozenset[str] | None = None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


@dataclass(frozen=True)
class KeyPolicy:
    """Everything the gateway knows about one key: its tenant, its models and its limits (None:
    unlimited). `ident` identifies the key in the gateway's own bookkeeping (its digest's hex)."""

    tenant: str
    scope: Scope = Scope()
    max_concurrent: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_tokens: int | None = None
    weight: int = 1  # the tenant's requests admitted per turn when requests wait (admission.py)
    ident: str = ""

    def allows(self, model: str) -> bool:
        return self.scope.allows(model)

    @property
    def limited(self) -> bool:
        """Whether any limit applies to this key's requests (`max_tokens` alone is checked elsewhere)."""
        return bool(self.max_concurrent or self.requests_per_minute or self.tokens_per_minute)


OPEN = KeyPolicy(OPEN_TENANT, ident="open")  # no keys configured: everyone sees everything


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


# What an Authorization header can carry of a key, as the gateway reads it (the value stripped):
# visible ASCII, spaces only inside. A key with a newline or a space at its end (pasted), or a
# letter outside ASCII (the server reads header bytes as Latin-1), is one no request can match.
_SENDABLE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")


def unsendable(key: str) -> str | None:
    """Why no request can send `key` (never quoting it), or None where one can."""
    if _SENDABLE.fullmatch(key):
        return None
    if key != key.strip(" \t\r\n"):
        return "it begins or ends with a space or a line break"
    if not key.isascii():
        return "it has a letter outside ASCII"
    return "it has a control character or a space that is not a single one"


class _Object(dict):
    """A JSON object, with the names it gives more than once (json.loads keeps the last silently)."""

    twice: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, object]]) -> _Object:
    found = _Object(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        found.twice = tuple(name for name, _ in pairs if name in seen or seen.add(name))
    return found


def _scope(models: object, where: str) -> Scope:
    if models == ALL:
        return Scope()
    if isinstance(models, list) and all(isinstance(m, str) and m for m in models):
        return Scope(frozenset(models))
    raise UserError(f'{where}: give a list of model names or "*", got {models!r}')


def _policy(value: object, where: str, number: int, ident: str) -> KeyPolicy:
    if not isinstance(value, Mapping):
        return KeyPolicy(f"key-{number}", _scope(value, where), ident=ident)
    if isinstance(value, _Object) and value.twice:
        raise UserError(f"{where}: setting {value.twice[0]!r} is given twice; give it once")
    unknown = sorted(set(value) - set(SETTINGS))
    if unknown:
        known = ", ".join(SETTINGS)
        raise UserError(f"{where}: unknown setting {unknown[0]!r}; a key's settings are {known}")
    tenant = value.get("tenant", f"key-{number}")
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
        raise UserError(f"{where}: tenant must be 1 to 64 letters, digits or _ . : -, got {tenant!r}")
    if "tasks" not in value:
        raise UserError(f'{where}: give "tasks", a list of model names or "*"')
    limits = {}
    for name in LIMITS:
        limit = value.get(name)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise UserError(f"{where}: {name} must be a whole number of at least 1, got {limit!r}")
        limits[name] = limit
    weight = value.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
        raise UserError(f"{where}: weight must be a whole number from 1 to {MAX_WEIGHT}, got {weight!r}")
    return KeyPolicy(tenant, _scope(value["tasks"], where), weight=weight, ident=ident, **limits)


def parse_keys_file(path: Path) -> dict[bytes, KeyPolicy]:
    """The keys file -> policies by key digest, or UserError naming what is wrong (never the key)."""
    form = 'the API keys file is a JSON object {"KEY": ["task", ...] or "*"}'
    try:
        # utf-8-sig: a byte order mark (Windows editors, PowerShell's Out-File) is no JSON error
        data = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_object)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the API keys file {path}: {exc}") from None
    except json.JSONDecodeError as exc:  # its message names a place, never the text there
        raise UserError(f"{path} is not JSON ({exc}): {form}") from None
    if not isinstance(data, Mapping):
        raise UserError(f"{path}: {form}")
    if isinstance(data, _Object) and data.twice:  # the later one would count, whatever it allows
        number = list(data).index(data.twice[0]) + 1
        raise UserError(f"{path}: key number {number} is given again further on; give each key once")
    policies: dict[bytes, KeyPolicy] = {}
    # a weight is the tenant's: the one its keys give (they must agree), on all of them, or 1
    weights: dict[str, tuple[int, int]] = {}  # tenant -> (weight, the number of the key giving it)
    for number, (key, value) in enumerate(data.items(), start=1):
        where = f"{path}: key number {number}"  # never the key itself
        if not isinstance(key, str) or not key:
            raise UserError(f"{where} is empty")
        why = unsendable(key)
        if why is not None:
            raise UserError(f"{where} cannot be sent in an Authorization header: {why}")
        digest = _digest(key)
        policy = policies[digest] = _policy(value, where, number, digest.hex())
        if isinstance(value, Mapping) and "weight" in value:
            weight, first = weights.setdefault(policy.tenant, (policy.weight, number))
            if weight != policy.weight:
                raise UserError(
                    f"{where} gives tenant {policy.tenant!r} weight {policy.weight}, key number {first} "
                    f"weight {weight}: a weight is the tenant's, give its keys the same one"
                )
    return {
        digest: replace(p, weight=weights[p.tenant][0]) if p.tenant in weights else p
        for digest, p in policies.items()
    }


class KeyRing:
    """The keys the gateway accepts; `policy_of(header)` is a request's policy, or None if refused."""

    def __init__(self, keys: Iterable[str] = (), keys_file: str | os.PathLike[str] | None = None) -> None:
        self._fixed: dict[bytes, KeyPolicy] = {}
        for key in keys:
            if not key:
                raise UserError(f"--api-key (or {ENV_KEY}) must not be empty")
            why = unsendable(key)
            if why is not None:
                raise UserError(f"--api-key (or {ENV_KEY}) cannot be sent in an Authorization header: {why}")
            digest = _digest(key)
            self._fixed[digest] = KeyPolicy(ADMIN_TENANT, ident=digest.hex())
        self.keys_file = Path(keys_file) if keys_file is not None else None
        self._from_file: dict[bytes, KeyPolicy] = {}
        self._file_state: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        if self.keys_file is not None:
            self._from_file = parse_keys_file(self.keys_file)  # a bad file fails the start, in one line
            self._file_state = self._stat()

    @property
    def open(self) -> bool:
        return not self._fixed and self.keys_file is None

    def tenants(self) -> set[str]:
        """Every tenant name the current keys can carry (the metrics' label values)."""
        if self.open:
            return {OPEN_TENANT}
        return {p.tenant for p in (*self._fixed.values(), *self._from_file.values())}

    def describe(self) -> str:
        """For the start-up line."""
        if self.open:
            return f"the API is open to anyone who reaches it (no --api-key, {ENV_KEY} or --api-keys)"
        parts = []
        if self._fixed:
            parts.append(f"{len(self._fixed)} key(s) for every model")
        if self.keys_file is not None:
            limited = sum(1 for p in self._from_file.values() if p.limited or p.max_tokens)
            parts.append(
                f"{len(self._from_file)} key(s) from {self.keys_file} ({limited} with limits), "
                "read again when it changes"
            )
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
            if state is None:  # deleted, or moved away mid-edit: refused, not kept, and said
                log.warning(
                    "the API keys file %s is gone: none of its keys is accepted until it is back",
                    self.keys_file,
                )
                self._from_file = {}
                return
            try:
                self._from_file = parse_keys_file(self.keys_file)
            except UserError as exc:
                log.warning("keeping the previous API keys: %s", exc)

    def policy_of(self, authorization: str | None) -> KeyPolicy | None:
        """The policy of a request's `Authorization` header; None when the key is missing or wrong."""
        if self.open:
            return OPEN
        if self.keys_file is not None:
            self._refresh()
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        digest = _digest(key.strip())
        return self._fixed.get(digest) or self._from_file.get(digest)
