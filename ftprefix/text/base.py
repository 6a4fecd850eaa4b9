"""The one tokenizer interface every text path of ftprefix uses (client, gateway, Triton python models).

Ids are exactly the ones the model was trained with: `encode` is Hugging Face's
`tokenizer.encode(text, add_special_tokens=False)` and `decode` its `decode(ids,
skip_special_tokens=True)`, for the tokenizer class the directory names (see `load.py`). A
completion's text is what the prompt continues with: the text `decode(prompt + generated)` adds
after `decode(prompt)`. Decoding the generated ids alone would lose, for SentencePiece, the space of
a first `▁` piece the model did generate.

rinna's newline convention is opt-in (`newline_token="<NL>"`): their instruction models never saw
`\\n`, so `\\n` in prompts and words is written as that token and the token is turned back into
`\\n` in answers, as their model cards do by hand.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

from ftprefix.text.files import TokenizerError, TokenizerFiles


def common_prefix_length(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Tokenizer(ABC):
    """A model's tokenizer: `encode`, `decode`, `continuation`, and what chat templates need."""

    def __init__(
        self, path: Path, description: str, files: TokenizerFiles, newline_token: str | None
    ) -> None:
        if newline_token is not None and (not newline_token or "\n" in newline_token):
            raise TokenizerError(
                f"--newline-token {newline_token!r} must be a non-empty token without a newline"
            )
        self.path = path  # the vocabulary file
        self.description = description  # e.g. "spiece.model, T5Tokenizer (slow, legacy)"
        self.newline_token = newline_token
        self.chat_template = files.chat_template
        self._files = files

    # -- what each implementation provides ------------------------------------------------------

    @abstractmethod
    def _encode(self, text: str) -> list[int]:
        """HF `encode(text, add_special_tokens=False)`."""

    @abstractmethod
    def _decode(self, ids: Sequence[int]) -> str:
        """HF `decode(ids, skip_special_tokens=True)`."""

    @abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of one token (a vocabulary entry or added token), or None."""

    def _decoder_after(self, prompt_ids: Sequence[int]) -> Callable[[Sequence[int]], str]:
        """`generated -> _decode(prompt + generated)`; an implementation may keep the prompt's
        share of the work instead of redoing it for every streamed token."""
        prompt = list(prompt_ids)
        return lambda generated: self._decode([*prompt, *generated])

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """One more than the largest id the tokenizer gives (added tokens included)."""

    # -- special tokens -------------------------------------------------------------------------

    def special_token(self, name: str) -> str | None:
        """The text of a named special token (`bos_token`, `eos_token`, ...), as chat templates see it."""
        spec = self._files.special(name)
        return spec.content if spec is not None else None

    @property
    def eos_id(self) -> int | None:
        eos = self.special_token("eos_token")
        return self.token_to_id(eos) if eos is not None else None

    # -- the text paths -------------------------------------------------------------------------

    def _to_model(self, text: str) -> str:
        return text.replace("\n", self.newline_token) if self.newline_token else text

    def _from_model(self, text: str) -> str:
        return text.replace(self.newline_token, "\n") if self.newline_token else text

    def encode(self, text: str) -> list[int]:
        """The ids of `text` as the model was trained on them."""
        return self._encode(self._to_model(text))

    def encode_word(self, word: str) -> list[int]:
        """The ids of a stop or bad word, as FT compares them with generated ids.

        SentencePiece (and Metaspace tokenizers) start every encoded text with a word-boundary
        `▁`; generated mid-sentence, the word has none, so a leading token that decodes to
        nothing is left out unless the word itself starts with whitespace.
        """
        text = self._to_model(word)
        ids = self._encode(text)
        if len(ids) > 1 and not text[:1].isspace() and not self._decode(ids[:1]).strip():
            return ids[1:]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, special tokens left out."""
        return self._from_model(self._decode(ids))

    def continuation(self, prompt_ids: Sequence[int], generated_ids: Sequence[int]) -> str:
        """What `decode(prompt + generated)` adds after `decode(prompt)`: a completion's text."""
        return Continuation(self, prompt_ids).text(generated_ids)

    def continuing(self, prompt_ids: Sequence[int]) -> Continuation:
        """For a stream: the continuation's text as generated ids arrive, the prompt decoded once."""
        return Continuation(self, prompt_ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.description!r})"


class Continuation:
    """The text a row's generated ids add to its prompt (`Tokenizer.continuation`)."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.prompt_ids = [int(t) for t in prompt_ids]
        self._decode_after = tokenizer._decoder_after(self.prompt_ids)
        self._prompt_text = self._decode_after([])

    def text(self, generated_ids: Sequence[int]) -> str:
        if len(generated_ids) == 0:  # a list, or a row of FT's output tensor
            return ""
        full = self._decode_after(generated_ids)
        # Normally decode(prompt) is a prefix of decode(prompt + generated); where a prompt ends
        # inside a character (byte pieces) the full text completes it, and that character counts as
        # continuation.
        return self.tokenizer._from_model(full[common_prefix_length(self._prompt_text, full) :])
