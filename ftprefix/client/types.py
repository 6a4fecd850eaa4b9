"""Public parameter and result types of the client."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypedDict

import numpy as np

from ftprefix.client.errors import InvalidRequestError
from ftprefix.ft_rows import FinishReason

Prompt = str | Sequence[int]
Words = str | Sequence[str | Sequence[int]]  # stop / bad words: text, or token-id sequences; a str is one


class GenerateOptions(TypedDict, total=False):
    """The keyword arguments of every generate / generate_batch / stream call (see GenerationParams)."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    seed: int | Sequence[int]
    stop: Words | None
    bad_words: Words | None
    end_id: int | None
    return_log_probs: bool
    min_new_tokens: int


def is_items(value: Any) -> bool:
    """Whether `value` is a collection of items (a list, a tuple, numpy's array, ...), not text or
    bytes, which iterate too: one prompt, word or task name is a string, never its characters."""
    return type(value) in (list, tuple) or (
        isinstance(value, Iterable) and not isinstance(value, (str, bytes, bytearray))
    )


def token_ids(prompt: Prompt | Sequence[int], what: str = "a prompt") -> list[int] | None:
    """A prompt's (or a stop word's: `what`) token ids, or None for text. Ids are integers
    (Python's, numpy's): a string among them is a list of prompts given where one belongs, and
    int("12") had read a number written as text as an id."""
    if isinstance(prompt, str):
        return None
    if not is_items(prompt):
        own_list = f" ({what}'s ids go in a list of their own: [[1, 2]])" if isinstance(prompt, int) else ""
        raise InvalidRequestError(f"{what} is text (str) or token ids (ints), got {prompt!r:.80}{own_list}")
    # numpy's integer arrays whole; Python's ints at once (the gateway's lists): no call per id
    integral = isinstance(prompt, np.ndarray) and prompt.ndim == 1 and prompt.dtype.kind in "iu"
    ids = prompt.tolist() if integral else list(prompt)
    if not set(map(type, ids)) <= {int}:
        for i, token in enumerate(ids):
            if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
                several = " (several prompts go to generate_batch; generate and stream take one)"
                raise InvalidRequestError(
                    f"token ids are integers, got {token!r:.80} in {what}"
                    + (several if isinstance(token, str) and what == "a prompt" else "")
                )
            ids[i] = int(token)
    if ids and (min(ids) < 0 or max(ids) >= 2**32):
        raise InvalidRequestError("token ids must be non-negative 32-bit integers")
    return ids


def _words(words: Words, name: str) -> tuple[str | list[int], ...]:
    """Stop or bad words (option `name`), each text or checked token ids; one string is one word,
    as OpenAI's `stop` takes it (iterated, each of its characters would be one)."""
    if not isinstance(words, str) and not is_items(words):
        raise InvalidRequestError(
            f"{name} is a string, or a list of strings and token-id lists, got {words!r:.80} "
            f"({type(words).__name__})"
        )
    checked: list[str | list[int]] = []
    for word in (words,) if isinstance(words, str) else words:
        if isinstance(word, str):
            if not word:  # as the OpenAI API refuses it: a word of nothing matches nowhere, or everywhere
                raise InvalidRequestError(f"{name} holds an empty string: leave it out")
            checked.append(word)
            continue
        ids = token_ids(word, "a stop or bad word") or []
        if not ids:
            raise InvalidRequestError(f"{name} holds an empty list of token ids: leave it out")
        if max(ids) >= 2**31:  # stop_words_list and bad_words_list are INT32
            raise InvalidRequestError(f"token id {max(ids)} in a stop or bad word does not fit FT's int32")
        checked.append(ids)
    return tuple(checked)


@dataclass(frozen=True)
class GenerationParams:
    """How to generate; maps 1:1 onto the FT backend's optional inputs.

    FT decodes greedily when `top_k` and `top_p` are both 0 (the default here). `stop`: generation
    of a row ends right after one of these (FT keeps it in the tokens; the text leaves a stop
    string out, as OpenAI's `stop` does). `bad_words`: never generated. `end_id`: the token that
    ends a row (default: the model's, from the server). `min_new_tokens`: the end token is not
    generated before this many new tokens (FT's `min_length`). `return_log_probs`: ask FT for
    `output_log_probs`, the chosen tokens' log probabilities (`Completion.log_probs`; FT's top-k
    decoding, greedy included, normalises them within the k candidates, so greedy ones are 0).
    `seed`: FT's `random_seed` when sampling, one for every prompt of the call (two equal prompts
    then sample alike) or a sequence of one per prompt.
    """

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | Sequence[int] = 0
    stop: Words | None = None
    bad_words: Words | None = None
    end_id: int | None = None
    return_log_probs: bool = False
    min_new_tokens: int = 0

    def __post_init__(self) -> None:
        # one seed for every row, or one per prompt: ints (numpy's too), a sequence as a tuple
        if type(self.seed) is not int:
            object.__setattr__(self, "seed", _seeds(self.seed))
        for name in ("stop", "bad_words"):
            if (words := getattr(self, name)) is not None:
                object.__setattr__(self, name, _words(words, name))

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> GenerationParams:
        """From a call's keyword arguments, refusing names that are not options."""
        known = _OPTION_NAMES
        if not known.issuperset(options):
            unknown = sorted(set(options) - known)
            raise TypeError(
                f"unexpected keyword argument {unknown[0]!r}; options are: {', '.join(sorted(known))}"
            )
        params = cls(**options)
        params.check()
        return params

    def check(self) -> None:
        """Raise InvalidRequestError for a value FT would reject or misread."""
        # a value of another type would be read as another one on the wire: 2.5 tokens as 2, True
        # as 1, "yes" as asking for log probabilities. Plain ints, floats and bools pass at once
        # (the gateway's every request); anything else is looked at option by option.
        if not (
            type(self.max_new_tokens) is int
            and type(self.top_k) is int
            and type(self.min_new_tokens) is int
            and (self.end_id is None or type(self.end_id) is int)
            and type(self.temperature) in _PLAIN_NUMBERS
            and type(self.top_p) in _PLAIN_NUMBERS
            and type(self.repetition_penalty) in _PLAIN_NUMBERS
            and type(self.return_log_probs) is bool
        ):
            self._check_types()
        # integers outside FT's types would wrap on the wire (numpy casts them silently): refused
        if not 1 <= self.max_new_tokens < 2**31:  # uint32, added to the input length in int
            raise InvalidRequestError(f"max_new_tokens must be within [1, 2**31), got {self.max_new_tokens}")
        if not _positive_float32(self.temperature, finite=False):  # what FT sees
            raise InvalidRequestError(
                f"temperature must be > 0, got {self.temperature} (for greedy use top_k=0, top_p=0)"
            )
        if not 0 <= self.top_k < 2**32:  # FT's type; FT samples from at most 1024 (protocol.TOP_K_MAX)
            raise InvalidRequestError(f"top_k must be within [0, 2**32), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise InvalidRequestError(f"top_p must be within [0, 1], got {self.top_p}")
        if not _positive_float32(self.repetition_penalty, finite=True):  # FT divides by it in float32
            raise InvalidRequestError(
                f"repetition_penalty must be > 0 and a float32, got {self.repetition_penalty}"
            )
        for seed in (self.seed,) if isinstance(self.seed, int) else self.seed:
            if not 0 <= seed < 2**64:
                raise InvalidRequestError(f"seed must be within [0, 2**64), got {seed}")
        if not 0 <= self.min_new_tokens < 2**31:
            raise InvalidRequestError(f"min_new_tokens must be 0 or more, got {self.min_new_tokens}")
        if self.end_id is not None and not 0 <= self.end_id < 2**32:
            raise InvalidRequestError(f"end_id must be a token id, got {self.end_id}")

    def _check_types(self) -> None:
        for name in _INTEGER_OPTIONS:
            _require(name, getattr(self, name), _is_integer, "an integer")
        if self.end_id is not None:
            _require("end_id", self.end_id, _is_integer, "a token id (an integer)")
        for name in _NUMBER_OPTIONS:
            _require(name, getattr(self, name), _is_number, "a number")
        _require("return_log_probs", self.return_log_probs, _is_bool, "True or False")


_OPTION_NAMES = frozenset(f.name for f in fields(GenerationParams))
_PLAIN_NUMBERS = (int, float)
_INTEGER_OPTIONS = ("max_new_tokens", "top_k", "min_new_tokens")
_NUMBER_OPTIONS = ("temperature", "top_p", "repetition_penalty")
_BOOLS = (bool, np.bool_)


def _is_integer(value: Any) -> bool:
    """Python's or numpy's integers, not bools (Python's are ints)."""
    return type(value) is int or (isinstance(value, (int, np.integer)) and not isinstance(value, _BOOLS))


def _is_number(value: Any) -> bool:
    """Integers or floats, Python's or numpy's, not bools."""
    return type(value) in _PLAIN_NUMBERS or (
        isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, _BOOLS)
    )


def _is_bool(value: Any) -> bool:
    return isinstance(value, _BOOLS)


def _require(name: str, value: Any, kind: Callable[[Any], bool], what: str) -> None:
    if not kind(value):
        raise InvalidRequestError(f"{name} must be {what}, got {value!r:.80} ({type(value).__name__})")


def _seeds(value: Any) -> int | tuple[int, ...]:
    if _is_integer(value):
        return operator.index(value)
    if is_items(value):
        seeds = tuple(value)
        if all(map(_is_integer, seeds)):
            return tuple(map(operator.index, seeds))
    raise InvalidRequestError(f"seed must be an integer, or a sequence of one per prompt, got {value!r:.80}")


def _positive_float32(value: Any, finite: bool) -> bool:
    """Whether `value` is above 0 (and finite) as float32. Checked for every request: a plain
    number well inside float32's range answers without numpy's scalars (about 1 us each)."""
    if type(value) in (float, int) and 1e-30 <= value <= 1e30:
        return True
    with np.errstate(over="ignore"):  # a value beyond float32 is inf there, which is checked
        as_float32 = np.float32(value)
    return bool(0 < as_float32 < np.inf) if finite else bool(as_float32 > 0)


@dataclass(frozen=True)
class Completion:
    """One generated continuation.

    `token_ids` are the generated tokens (at most max_new_tokens; a final end token or stop
    sequence included, as FT keeps them); `text` is their decoding without special tokens and
    without a trailing stop string. `text` is None when there is no tokenizer to decode with;
    `token_ids` is empty, and `finish_reason` None unless a stop string ended it, when the text
    went through the server's ensemble (it returns neither ids nor a token count).
    """

    text: str | None
    token_ids: list[int]
    finish_reason: FinishReason | None
    task: str | None
    prompt_token_count: int | None = None
    # with return_log_probs: FT's output_log_probs of `token_ids`, and the text each token adds
    # (concatenated: `text`)
    log_probs: list[float] | None = None
    token_texts: list[str] | None = None


@dataclass(frozen=True)
class StreamChunk:
    """The tokens (and text) that arrived since the previous chunk of a stream.

    `finish_reason` is set on the last chunk only; `prompt_token_count` on every chunk.
    """

    token_ids: list[int]
    text: str | None
    finish_reason: FinishReason | None = None
    index: int = 0  # row of the batch this chunk belongs to
    prompt_token_count: int | None = None
