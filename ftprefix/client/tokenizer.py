"""Client-side tokenisation with the `tokenizers` library only (transformers would pull in torch)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ftprefix.client.errors import FtprefixClientError

TOKENIZER_FILE = "tokenizer.json"


class ClientTokenizer:
    """The model's Hugging Face fast tokenizer, read from `tokenizer.json` in its directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        from tokenizers import Tokenizer

        path = Path(directory)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise FtprefixClientError(
                f"no {TOKENIZER_FILE} at {path}; pass the Hugging Face model directory that holds it "
                "(a fast tokenizer), or leave the tokenizer out to send text through the server's ensemble"
            )
        self.path = file
        self._tokenizer = Tokenizer.from_file(str(file))
        self.eos_id = self._eos_id(file.parent)

    def _eos_id(self, directory: Path) -> int | None:
        """The end token id from tokenizer_config.json / special_tokens_map.json, if they name one."""
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            file = directory / name
            if not file.is_file():
                continue
            eos = json.loads(file.read_text(encoding="utf-8")).get("eos_token")
            if isinstance(eos, dict):
                eos = eos.get("content")
            if isinstance(eos, str) and self._tokenizer.token_to_id(eos) is not None:
                return self._tokenizer.token_to_id(eos)
        return None

    def encode(self, text: str) -> list[int]:
        # GPT-NeoX tokenizers add no special tokens; FT's own preprocessing encodes the same way.
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=True)
