"""What a Hugging Face tokenizer directory says about itself, read the way `from_pretrained` reads it.

The files: `tokenizer_config.json` (class, flags, special tokens, `added_tokens_decoder`, chat
template), `special_tokens_map.json`, `added_tokens.json`, and the vocabulary (`tokenizer.json`,
`spiece.model`, `tokenizer.model`). Precedence as in transformers 4.x
(`PreTrainedTokenizerBase._from_pretrained`): with an `added_tokens_decoder` in the config, that is
the whole list of added tokens and special_tokens_map.json is not read; without one,
special_tokens_map.json overrides the config's special tokens and the added tokens come from
added_tokens.json and tokenizer.json. json and the standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftprefix.errors import UserError

CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
JSON_FILE = "tokenizer.json"
TEMPLATE_FILE = "chat_template.jinja"  # transformers >= 4.43 saves the template beside the config

# transformers' SPECIAL_TOKENS_ATTRIBUTES, less additional_special_tokens (a list)
NAMED_SPECIAL_TOKENS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


class TokenizerError(UserError):
    """A tokenizer directory ftprefix cannot read exactly: one line naming the file and what is wrong."""


@dataclass(frozen=True)
class TokenSpec:
    """An added token (transformers' `AddedToken`): its text and how it eats whitespace around it."""

    content: str
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False
    special: bool = True
    # written as an object (with its flags) rather than a bare string: transformers then lets it
    # replace an added token of the same text instead of keeping that one
    declared: bool = False

    @classmethod
    def parse(cls, value: Any, *, special: bool = True, where: str = CONFIG_FILE) -> TokenSpec:
        if isinstance(value, str):
            return cls(value, special=special)
        if isinstance(value, Mapping) and isinstance(value.get("content"), str):
            return cls(
                str(value["content"]),
                lstrip=bool(value.get("lstrip", False)),
                rstrip=bool(value.get("rstrip", False)),
                single_word=bool(value.get("single_word", False)),
                special=bool(value.get("special", special)),
                declared=True,
            )
        raise TokenizerError(f"{where}: {value!r} is not a token (a string or an object with 'content')")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} is not a JSON object")
    return data


@dataclass(frozen=True)
class TokenizerFiles:
    """A tokenizer directory's settings, merged as transformers merges them."""

    directory: Path
    config: dict[str, Any] = field(default_factory=dict)  # tokenizer_config.json, special tokens merged in
    # id -> token, from added_tokens_decoder / added_tokens.json / tokenizer.json (in that order of choice)
    added_tokens: dict[int, TokenSpec] = field(default_factory=dict)

    @property
    def tokenizer_class(self) -> str | None:
        value = self.config.get("tokenizer_class")
        return str(value) if isinstance(value, str) and value else None

    def has(self, name: str) -> bool:
        return (self.directory / name).is_file()

    def special(self, name: str) -> TokenSpec | None:
        """A named special token (`eos_token`, ...) as configured, or None if the config sets none."""
        value = self.config.get(name)
        if value is None or value == "":
            return None
        spec = TokenSpec.parse(value, where=str(self.directory / CONFIG_FILE))
        # transformers swaps the named value for the added token of the same text, with its flags
        for token in self.added_tokens.values():
            if token.content == spec.content:
                return TokenSpec(token.content, token.lstrip, token.rstrip, token.single_word, True, True)
        return spec

    def additional_special(self) -> list[TokenSpec]:
        values = list(self.config.get("additional_special_tokens") or [])
        extra = self.config.get("extra_special_tokens") or {}
        if isinstance(extra, Mapping):
            values += list(extra.values())
        where = str(self.directory / CONFIG_FILE)
        return [TokenSpec.parse(v, where=where) for v in values]

    @property
    def chat_template(self) -> str | None:
        """The tokenizer's own Jinja chat template (`chat_template.jinja` or the config's), if any."""
        if self.has(TEMPLATE_FILE):
            return (self.directory / TEMPLATE_FILE).read_text(encoding="utf-8")
        value = self.config.get("chat_template")
        if isinstance(value, list):  # named templates: transformers uses "default"
            named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
            value = named.get("default")
        return value if isinstance(value, str) and value else None

    def flag(self, name: str, default: bool) -> bool:
        value = self.config.get(name)
        return default if value is None else bool(value)


def read_files(directory: Path) -> TokenizerFiles:
    config = _read_json(directory / CONFIG_FILE) if (directory / CONFIG_FILE).is_file() else {}
    added: dict[int, TokenSpec] = {}
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, Mapping) and decoder:
        where = str(directory / CONFIG_FILE)
        for key, value in decoder.items():
            try:
                index = int(key)
            except ValueError:
                raise TokenizerError(f"{where}: added_tokens_decoder key {key!r} is not a token id") from None
            added[index] = TokenSpec.parse(value, special=False, where=where)
        return TokenizerFiles(directory, config, added)
    if (directory / SPECIAL_TOKENS_FILE).is_file():
        merged = dict(config)
        for key, value in _read_json(directory / SPECIAL_TOKENS_FILE).items():
            if key == "additional_special_tokens" and isinstance(value, list):
                tokens = list(merged.get("additional_special_tokens") or [])
                contents = {TokenSpec.parse(t).content for t in tokens}
                tokens += [t for t in value if TokenSpec.parse(t).content not in contents]
                value = tokens
            merged[key] = value
        config = merged
    files = TokenizerFiles(directory, config)
    specials = {
        s.content
        for s in [*(files.special(n) for n in NAMED_SPECIAL_TOKENS), *files.additional_special()]
        if s
    }
    if (directory / ADDED_TOKENS_FILE).is_file():
        for content, index in _read_json(directory / ADDED_TOKENS_FILE).items():
            added[int(index)] = TokenSpec(content, special=content in specials)
    if (directory / JSON_FILE).is_file():
        try:
            entries = json.loads((directory / JSON_FILE).read_text(encoding="utf-8")).get("added_tokens", [])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise TokenizerError(f"cannot read {directory / JSON_FILE}: {exc}") from None
        for entry in entries:
            added[int(entry["id"])] = TokenSpec.parse(entry, special=False, where=str(directory / JSON_FILE))
    return TokenizerFiles(directory, config, added)
