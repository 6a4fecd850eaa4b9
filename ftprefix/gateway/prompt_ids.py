"""Prompts' token ids without stalling the gateway.

Tokenizing ran on the event loop, which serves every request at once: a 4 MB prompt (the largest
body the gateway takes) held it 3.4 s, and every other request with it, though its answer was only
a 400 (context length exceeded). So the prompts of a request longer than LONG_CHARS characters in
all are tokenized on a small pool of threads while the loop serves the others (the tokenizers let
other threads run meanwhile: SentencePiece and the `tokenizers` library's batch call release the
GIL, the pure-Python paths hand it over every few milliseconds), and each long one's head first:
where its first HEAD_CHARS_PER_TOKEN x context characters alone are more than twice the context,
the prompt is refused without tokenizing the rest (the margin covers the head's last word, cut
short). Prompts that fit are much shorter: 2,048 tokens are about 10,000 characters of English.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ftprefix.text import Tokenizer

LONG_CHARS = 16 * 1024  # a request's prompts this long in all take a few milliseconds: on the loop
HEAD_CHARS_PER_TOKEN = 16  # the head: this many characters per token of context
THREADS = 2


@dataclass(frozen=True)
class TooLong:
    """A prompt refused on its head alone: its first `head_chars` characters are `head_tokens`."""

    head_chars: int
    head_tokens: int


class PromptIds:
    """The ids of prompts as `tokenizer` gives them, long ones off the event loop."""

    def __init__(self, tokenizer: Tokenizer, context: int) -> None:
        self.tokenizer = tokenizer
        self.context = context
        self.head_chars = HEAD_CHARS_PER_TOKEN * context
        self._pool: ThreadPoolExecutor | None = None  # started at the first long prompt

    async def of(self, texts: list[str]) -> list[list[int] | TooLong]:
        """The ids of each text, or TooLong for one refused on its head."""
        if sum(map(len, texts)) <= LONG_CHARS:
            return [self.tokenizer.encode(text) for text in texts]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="ftprefix-tokenize")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._long, texts)

    def _long(self, texts: list[str]) -> list[list[int] | TooLong]:
        out: list[list[int] | TooLong] = []
        for text in texts:
            if len(text) > self.head_chars:
                head = self.tokenizer.encode(text[: self.head_chars])
                if len(head) > 2 * self.context:
                    out.append(TooLong(self.head_chars, len(head)))
                    continue
            out.append(self.tokenizer.encode(text))
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
