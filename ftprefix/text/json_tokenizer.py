"""`tokenizer.json` (a Hugging Face fast tokenizer) through the `tokenizers` library, as
`PreTrainedTokenizerFast` uses it: encode without special tokens, decode skipping them, then the
optional clean-up of spaces the directory's config asks for."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

from ftprefix.text.base import Tokenizer
from ftprefix.text.files import JSON_FILE, TokenizerError, TokenizerFiles
from ftprefix.text.sentencepiece_slow import clean_up_spaces
from ftprefix.text.settled import SettledText, cut_sentinel, int_list, new_ids


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
        self._plain_ids: dict[int, bool] = {}  # _plain, per token

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def _encode(self, text: str) -> list[int]:
        # the batch call, not `encode`: it lets other threads run while it works (the single call
        # holds the GIL throughout, 3.4 s for a 4 MB prompt), for the same ids and 2 us more
        return list(self._tokenizer.encode_batch([text], add_special_tokens=False)[0].ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self._cleaned(self._raw(ids))

    def _raw(self, ids: Sequence[int]) -> str:
        # the Rust side takes any integer, numpy's included, through __index__
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    def _cleaned(self, text: str) -> str:
        return clean_up_spaces(text) if self._clean_up else text

    def _decoder_after(self, prompt_ids: Sequence[int]) -> Callable[[Sequence[int]], str]:
        return _Growing(self, prompt_ids)

    # -- a stream's text: settled head and tail (settled.py) ---------------------------------------

    @functools.cached_property
    def _sentinel(self) -> tuple[int, str] | None:
        """A token whose text is letters, and stays a prefix of the text of what follows it."""
        for index in range(min(self.vocab_size, 4096)):
            text = self._raw([index])
            if text.isascii() and text.isalpha() and self._raw([index, index]).startswith(text):
                return index, text
        return None

    def _after_sentinel(self, ids: list[int]) -> str | None:
        if self._sentinel is None:
            return None
        index, text = self._sentinel
        return cut_sentinel(self._raw([index, *ids]), text)

    def _plain(self, index: int) -> bool:
        """Whether a token decodes after other text to whole characters (no byte of an unfinished
        one): no later token changes the text before it. Remembered per token."""
        plain = self._plain_ids.get(index)
        if plain is None:
            rest = self._after_sentinel([index])
            plain = self._plain_ids[index] = bool(rest) and "\ufffd" not in rest
        return plain


class _Growing:
    """decode(prompt + generated) for a stream that asks again at every token with all of its
    tokens so far: the prompt and the answer so far decoded as a settled head and a tail
    (settled.py) instead of whole at every token, which the Rust decoder does in time that grows
    with both (290 us per token after a 2,000-token prompt)."""

    def __init__(self, tokenizer: JsonTokenizer, prompt_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._prompt = [int(i) for i in prompt_ids]
        self._ids = list(self._prompt)  # the prompt, then the generated ids asked for last time
        self._settled = SettledText(tokenizer._raw, tokenizer._after_sentinel, tokenizer._plain)

    def __call__(self, generated: Sequence[int]) -> str:
        ids = int_list(generated)
        known = self._ids
        new = new_ids(known[len(self._prompt) :], ids)
        if new is None:
            known = self._ids = list(self._prompt)  # a new list: the settled head starts anew
            new = ids
        known.extend(int(i) for i in new)
        text = self._settled.text(known)
        return self._tokenizer._cleaned(self._tokenizer._raw(known) if text is None else text)
