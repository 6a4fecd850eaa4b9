"""`tokenizer.json` (a Hugging Face fast tokenizer) through the `tokenizers` library, as
`PreTrainedTokenizerFast` uses it: encode without special tokens, decode skipping them, then the
optional clean-up of spaces the directory's config asks for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ftprefix.text.base import Tokenizer
from ftprefix.text.files import JSON_FILE, TokenizerError, TokenizerFiles
from ftprefix.text.sentencepiece_slow import clean_up_spaces


class JsonTokenizer(Tokenizer):
    def __init__(self, files: TokenizerFiles, path: Path, newline_token: str | None = None) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        try:
            self._tokenizer = RustTokenizer.from_file(str(path))
        except Exception as exc:  # the Rust library raises its own exception type
            raise TokenizerError(f"cannot read {path} as a Hugging Face tokenizer: {exc}") from None
        name = files.tokenizer_class or "PreTrainedTokenizerFast"
        super().__init__(path, f"{JSON_FILE}, {name}", files, newline_token)
        self._clean_up = files.flag("clean_up_tokenization_spaces", False)

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def _decode(self, ids: Sequence[int]) -> str:
        # the Rust side takes any integer, numpy's included, through __index__
        text = self._tokenizer.decode(list(ids), skip_special_tokens=True)
        return clean_up_spaces(text) if self._clean_up else text
