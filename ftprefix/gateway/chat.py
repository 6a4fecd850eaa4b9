"""Chat messages -> one prompt, with the model's own chat template, rendered as transformers renders it.

`apply_chat_template` (transformers `utils/chat_template_utils.py`) renders a Jinja template in an
immutable sandbox with `trim_blocks` and `lstrip_blocks`, the loop-controls extension, a `tojson`
that keeps non-ASCII text, `raise_exception` and `strftime_now`, and passes `messages`,
`add_generation_prompt` and the tokenizer's special tokens (`bos_token`, `eos_token`, ...). The
template comes from the tokenizer (tokenizer_config.json's `chat_template`, or chat_template.jinja)
or from `--chat-template FILE`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ftprefix.errors import UserError
from ftprefix.text import Tokenizer
from ftprefix.text.files import NAMED_SPECIAL_TOKENS


class ChatTemplateError(ValueError):
    """The template refused the messages (its raise_exception) or failed to render them."""


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False
):
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class ChatTemplate:
    def __init__(self, source: str, tokenizer: Tokenizer, origin: str) -> None:
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise UserError(f"{origin}: not a Jinja template: {exc.message} (line {exc.lineno})") from None
        self.origin = origin
        self._specials = {name: tokenizer.special_token(name) or "" for name in NAMED_SPECIAL_TOKENS}

    def render(self, messages: Sequence[Mapping[str, Any]]) -> str:
        import jinja2

        try:
            return self._template.render(
                messages=list(messages), add_generation_prompt=True, **self._specials
            )
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the chat template failed on these messages: {exc}") from None
        except (TypeError, ValueError, LookupError, AttributeError, ArithmeticError) as exc:
            # what a template's own Python expressions raise on messages it was not written for
            # (`content.upper(1)`, `messages[0]` of none): the messages' fault, not a bug here
            raise ChatTemplateError(
                f"the chat template failed on these messages: {type(exc).__name__}: {exc}"
            ) from None


def load_chat_template(tokenizer: Tokenizer, path: str | os.PathLike[str] | None) -> ChatTemplate | None:
    """`--chat-template FILE` if given, else the tokenizer's own template, else None."""
    if path is not None:
        file = Path(path)
        try:
            source = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read --chat-template {file}: {exc}") from None
        return ChatTemplate(source, tokenizer, str(file))
    if tokenizer.chat_template:
        return ChatTemplate(
            tokenizer.chat_template, tokenizer, f"the chat_template of {tokenizer.path.parent}"
        )
    return None
