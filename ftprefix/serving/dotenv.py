"""A compose `.env` file: read its values, and change some of them without touching the rest.

The subset of docker compose's dotenv format (compose-spec/compose-go `dotenv/parser.go`) a
deployment's `.env` uses: `KEY=VALUE` lines, an optional `export ` in front, `#` comment lines and
` #` comments after an unquoted value, values bare, 'single-quoted' (literal) or "double-quoted".
ftprefix writes values bare when they hold nothing compose would read specially, single-quoted
otherwise (no interpolation inside single quotes), so what compose reads is what was written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ftprefix.errors import UserError

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*)$")
_BARE = re.compile(r"^[A-Za-z0-9_./:@+,<>%=~-]*$")
_DOUBLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def _value(raw: str) -> str:
    raw = raw.strip()
    if raw.startswith("'"):
        end = raw.find("'", 1)
        return raw[1:end] if end > 0 else raw[1:]
    if raw.startswith('"'):
        out, i = [], 1
        while i < len(raw) and raw[i] != '"':
            if raw[i] == "\\" and i + 1 < len(raw):
                out.append(_DOUBLE_ESCAPES.get(raw[i + 1], "\\" + raw[i + 1]))
                i += 2
            else:
                out.append(raw[i])
                i += 1
        return "".join(out)
    comment = re.search(r"\s#", raw)
    return (raw[: comment.start()] if comment else raw).strip()


def parse(text: str) -> dict[str, str]:
    """KEY -> value, the last line winning as in compose."""
    values = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and not line.lstrip().startswith("#"):
            values[match.group(1)] = _value(match.group(2))
    return values


def format_line(key: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise UserError(f"{key}: a value for .env cannot hold a line break")
    if _BARE.match(value):
        return f"{key}={value}"
    if "'" not in value:
        return f"{key}='{value}'"
    if not set(value) & set('"$\\'):
        return f'{key}="{value}"'
    raise UserError(
        f"{key}: {value!r} holds both ' and one of \" $ \\, which compose's .env cannot quote as is"
    )


def update(text: str, values: Mapping[str, str]) -> str:
    """`text` with each key of `values` set: its line replaced where it has one (the last), else
    appended. Every other line, comments included, stays as it was."""
    lines = text.splitlines()
    last_line = {}
    for number, line in enumerate(lines):
        match = _LINE.match(line)
        if match and not line.lstrip().startswith("#"):
            last_line[match.group(1)] = number
    for key, value in values.items():
        if key in last_line:
            lines[last_line[key]] = format_line(key, value)
        else:
            lines.append(format_line(key, value))
    return "".join(line + "\n" for line in lines)
