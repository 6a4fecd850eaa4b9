"""SentencePiece models with the semantics of Hugging Face's slow `T5Tokenizer` / `LlamaTokenizer`.

rinna's japanese-gpt-neox models (and LINE's japanese-large-lm) ship `spiece.model` with
`"tokenizer_class": "T5Tokenizer"`, loaded with `use_fast=False` by their model cards and by rinna's
prefix-tuning code; GPT-NeoX models such as japanese-stablelm-base-alpha ship `tokenizer.model`
with `LlamaTokenizer`. Every prefix was trained on the ids these classes give, so this reproduces
them with the `sentencepiece` package alone, following transformers 4.57
(`tokenization_utils.py`, `models/t5/tokenization_t5.py`, `models/llama/tokenization_llama.py`):

- added tokens: T5's `<extra_id_N>`, the directory's added tokens, then the special tokens in
  transformers' order; one that is not a piece of the model takes the next free id.
- encode: the text is cut at added tokens (added_token_split.py); each token's lstrip / rstrip
  strips its neighbours, whatever they are; each added token is its own id and each piece of text
  between them is encoded by SentencePiece on its own, so it gets its own leading `▁`.
  `split_special_tokens` encodes the whole text as text; `legacy: false` is SentencePiece without
  the dummy prefix and the classes' own `▁` handling.
- decode (skipping special tokens): ids become pieces; runs of pieces are decoded by
  SentencePiece (a leading `▁` of the first piece dropped), added tokens that are not special
  stand alone, and the parts are joined with spaces; T5 strips the result, Llama does not; then
  the optional clean-up of spaces before punctuation.

What is not reproduced (sampling options, single_word tokens) is refused rather than approximated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ftprefix.text.added_token_split import AddedTokenSplitter
from ftprefix.text.base import Tokenizer
from ftprefix.text.files import NAMED_SPECIAL_TOKENS, TokenizerError, TokenizerFiles, TokenSpec
from ftprefix.text.settled import SettledText, cut_sentinel, int_list, new_ids

UNDERLINE = "\u2581"  # SentencePiece's word boundary, "▁"

# `legacy: false` loads the model with normalizer_spec.add_dummy_prefix = false (transformers'
# get_spm_processor merges that into the ModelProto). Protobuf merges a repeated embedded message,
# so appending ModelProto field 3 (normalizer_spec) holding NormalizerSpec field 3 = false does
# the same without the protobuf package.
NO_DUMMY_PREFIX = bytes([3 << 3 | 2, 2, 3 << 3 | 0, 0])


@dataclass(frozen=True)
class Flavour:
    """What differs between the tokenizer classes this module reproduces."""

    name: str
    model_file: str
    defaults: dict[str, str | None]  # the class's default special tokens
    strip_decoded: bool  # T5's convert_tokens_to_string ends with .strip()
    default_extra_ids: int  # T5 adds <extra_id_N> tokens unless told otherwise


T5 = Flavour(
    "T5Tokenizer",
    "spiece.model",
    {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"},
    strip_decoded=True,
    default_extra_ids=100,
)
LLAMA = Flavour(
    "LlamaTokenizer",
    "tokenizer.model",
    {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": None},
    strip_decoded=False,
    default_extra_ids=0,
)
FLAVOURS = {f.name: f for f in (T5, LLAMA)}

# transformers' PreTrainedTokenizerBase.clean_up_tokenization
_CLEAN_UP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def clean_up_spaces(text: str) -> str:
    for old, new in _CLEAN_UP:
        text = text.replace(old, new)
    return text


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, files: TokenizerFiles, flavour: Flavour, newline_token: str | None = None) -> None:
        import sentencepiece

        path = files.directory / flavour.model_file
        where = f"{files.directory / 'tokenizer_config.json'} ({flavour.name})"
        if files.config.get("sp_model_kwargs"):
            raise TokenizerError(f"{where} sets sp_model_kwargs, which ftprefix does not reproduce")
        legacy = files.config.get("legacy")
        self._legacy = True if legacy is None else bool(legacy)
        try:
            model = path.read_bytes()
        except OSError as exc:
            raise TokenizerError(f"cannot read {path} ({flavour.name}): {exc}") from None
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model if self._legacy else model + NO_DUMMY_PREFIX)
        except (OSError, RuntimeError, TypeError) as exc:
            raise TokenizerError(f"{path} is not a SentencePiece model ({flavour.name}): {exc}") from None
        mode = "legacy" if self._legacy else "legacy: false"
        super().__init__(path, f"{flavour.model_file}, {flavour.name} (slow, {mode})", files, newline_token)
        self._flavour = flavour
        self._size = self._sp.get_piece_size()
        self._add_prefix_space = files.flag("add_prefix_space", True)
        self._clean_up = files.flag("clean_up_tokenization_spaces", False)
        self._split_special = files.flag("split_special_tokens", False)
        self._added: dict[int, TokenSpec] = {}  # transformers' _added_tokens_decoder
        self._encoder: dict[str, int] = {}  # and its _added_tokens_encoder
        self._named: dict[str, TokenSpec] = {}
        self._specials = self._add_special_tokens(files, flavour, where)
        self._special_set = set(self._specials)
        self._special_ids = {self._to_id(token) for token in self._specials}
        for token in self._added.values():
            if token.single_word:
                raise TokenizerError(
                    f"{where}: added token {token.content!r} is single_word, which ftprefix does not "
                    "reproduce"
                )
        self._splitter = AddedTokenSplitter(self._encoder)
        # decode: added tokens that stand alone between spaces (transformers' legacy_added_tokens)
        self._standalone = (set(self._encoder) - self._special_set) | {
            token for token in self._additional if self._to_id(token) >= self._size
        }
        if not self._legacy:
            unk = self._named.get("unk_token")
            if unk is None:
                raise TokenizerError(f"{where} sets legacy: false and no unk_token, which transformers needs")
            self._unk_prefix = unk.content
            self._unk_length = len(self._sp.encode(unk.content, out_type=str))

    # -- added and special tokens, as T5Tokenizer / LlamaTokenizer and PreTrainedTokenizer build them --

    def _add_special_tokens(self, files: TokenizerFiles, flavour: Flavour, where: str) -> list[str]:
        """Fills the added-token tables and returns the special tokens (all_special_tokens, in order)."""
        additional = files.additional_special()
        if flavour.default_extra_ids:
            additional = self._t5_extra_ids(files, additional, where)
        for index, token in files.added_tokens.items():
            self._added[index] = token
        self._encoder = {token.content: index for index, token in self._added.items()}
        specials: list[TokenSpec] = []
        for name in NAMED_SPECIAL_TOKENS:
            spec = files.special(name)
            if spec is None and name not in files.config and flavour.defaults.get(name):
                spec = TokenSpec(str(flavour.defaults[name]))
            if spec is None:
                continue
            if name in flavour.defaults:  # the class makes its own named tokens AddedToken objects
                spec = TokenSpec(spec.content, spec.lstrip, spec.rstrip, spec.single_word, True, True)
            self._named[name] = spec
            specials.append(spec)
        specials += additional
        self._additional = [token.content for token in additional]
        unique: dict[str, TokenSpec] = {}  # the first of each text, as all_special_tokens_extended
        for spec in specials:
            if spec.content:
                unique.setdefault(spec.content, spec)
        self._add_tokens(list(unique.values()))
        return list(unique)

    def _t5_extra_ids(
        self, files: TokenizerFiles, additional: list[TokenSpec], where: str
    ) -> list[TokenSpec]:
        """T5Tokenizer.__init__: the sentinel tokens <extra_id_N>, counted down from the top."""
        extra_ids = int(files.config.get("extra_ids", 100) or 0)
        if files.config.get("additional_special_tokens") is not None:
            found = [t for t in additional if "<extra_id_" in t.content]
            if not found:
                additional = [*additional, *(TokenSpec(f"<extra_id_{i}>") for i in range(extra_ids))]
            elif extra_ids > 0 and extra_ids != len(found):
                raise TokenizerError(
                    f"{where}: extra_ids is {extra_ids} and additional_special_tokens holds {len(found)} "
                    "<extra_id_N> tokens, which transformers refuses too; make them agree"
                )
        else:
            found = [TokenSpec(f"<extra_id_{i}>") for i in range(extra_ids)]
            additional = found
        for i in range(len(found)):
            self._added[self._size - 1 + extra_ids - i] = TokenSpec(
                f"<extra_id_{i}>", lstrip=True, rstrip=True
            )
        return additional

    def _add_tokens(self, tokens: list[TokenSpec]) -> None:
        """PreTrainedTokenizer._add_tokens(special_tokens=True): a token that is a piece (or already
        added) keeps that id, any other takes the next free one after the vocabulary's distinct
        entries. A bare string already added is left as it is; a declared token replaces it."""
        vocabulary = {
            (self._added[i].content if i in self._added else self._sp.id_to_piece(i)): i
            for i in range(self._size)
        }
        vocabulary.update(self._encoder)
        next_free = len(vocabulary)
        for token in tokens:
            if not token.declared and token.content in self._encoder:
                continue
            index = vocabulary.get(token.content)
            if index is None:
                index = vocabulary[token.content] = next_free
                next_free += 1
            self._added[index] = TokenSpec(
                token.content, token.lstrip, token.rstrip, token.single_word, True, token.declared
            )
            self._encoder[token.content] = index

    def _to_id(self, token: str) -> int:
        """convert_tokens_to_ids: an added token's id, else the piece's (the unknown id if none)."""
        index = self._encoder.get(token)
        return index if index is not None else self._sp.piece_to_id(token)

    @property
    def vocab_size(self) -> int:
        return max([self._size - 1, *self._added]) + 1

    def token_to_id(self, token: str) -> int | None:
        if token in self._encoder:
            return self._encoder[token]
        index = self._sp.piece_to_id(token)
        return index if self._sp.id_to_piece(index) == token else None

    def special_token(self, name: str) -> str | None:
        spec = self._named.get(name)
        return spec.content if spec is not None else None

    # -- encode: PreTrainedTokenizer.tokenize with the class's own tokenize / _tokenize -----------

    def _sentencepiece(self, text: str) -> list[str]:
        if self._legacy or not text.startswith((UNDERLINE, " ")):
            return self._sp.encode(text, out_type=str)
        # without the dummy prefix SentencePiece drops a leading "▁"; encoding after the unknown
        # token's text and cutting its pieces off keeps it (transformers' _tokenize)
        pieces = self._sp.encode(self._unk_prefix + text, out_type=str)
        return pieces[self._unk_length :] if len(pieces) >= self._unk_length else pieces

    def _tokenize(self, text: str) -> list[str]:
        if not text:
            return []
        if not self._legacy:
            text = text.replace(UNDERLINE, " ")
            if self._add_prefix_space:
                text = UNDERLINE + text
        protected = {} if self._split_special else self._encoder
        parts = [text] if self._split_special else self._splitter.split(text)
        for i, part in enumerate(parts):
            if part not in protected:
                continue
            # stripping applies to whatever neighbours the token, another added token included,
            # which may then no longer be one (or vanish, if it was only whitespace)
            token = self._added[protected[part]]
            if token.rstrip and i + 1 < len(parts) and parts[i + 1]:
                parts[i + 1] = parts[i + 1].lstrip()
            if token.lstrip and i > 0 and parts[i - 1]:
                parts[i - 1] = parts[i - 1].rstrip()
        tokens: list[str] = []
        for part in parts:
            if not part:
                continue
            if part in protected:
                tokens.append(part)
            else:
                tokens += self._sentencepiece(part)
        if not self._legacy and len(tokens) > 1 and tokens[0] == UNDERLINE and tokens[1] in self._special_set:
            tokens = tokens[1:]
        return tokens

    def _encode(self, text: str) -> list[int]:
        return [self._to_id(token) for token in self._tokenize(text)]

    # -- decode -----------------------------------------------------------------------------------

    def _pieces_to_text(self, pieces: list[str]) -> str:
        return self._run_text(self._run_raw(pieces))

    def _run_raw(self, pieces: list[str]) -> str:
        """SentencePiece's text of a run of pieces, before T5's strip."""
        if self._add_prefix_space and pieces[0].startswith(UNDERLINE):
            pieces = [pieces[0][1:], *pieces[1:]]
        return self._sp.decode(pieces)

    def _run_text(self, raw: str) -> str:
        return raw.strip() if self._flavour.strip_decoded else raw

    def _tail_raw(self, pieces: list[str]) -> str | None:
        """What `pieces` add to SentencePiece's text after a run that already shows text (the
        start of a text drops a leading space; after text nothing is dropped): decoded after a
        plain piece, whose own text is cut off. None if the model has no such piece."""
        piece = self._sentinel
        if piece is None:
            return None
        return cut_sentinel(self._sp.decode([piece, *pieces]), piece)

    @functools.cached_property
    def _sentinel(self) -> str | None:
        """A plain piece (no word boundary, no byte, control or unknown piece) whose text is itself."""
        for index in range(self._size):
            if not self._plain_index(index):
                continue
            piece = self._sp.IdToPiece(index)
            if piece and UNDERLINE not in piece and self._sp.decode([piece]) == piece:
                return piece
        return None

    def _plain(self, piece: str) -> bool:
        """A piece of the model whose text does not depend on the pieces after it."""
        return self._plain_index(self._sp.PieceToId(piece))

    def _plain_index(self, index: int) -> bool:
        """Neither a byte, control, unknown nor unused piece."""
        sp = self._sp
        return not (sp.IsControl(index) or sp.IsUnknown(index) or sp.IsByte(index) or sp.IsUnused(index))

    def _fold(self, ids: Sequence[int], parts: list[str], run: list[str]) -> tuple[list[str], list[str]]:
        """transformers' _decode as a left-to-right fold: `parts` (text already final) and `run`
        (pieces not yet decoded) extended by `ids`. Folding a prompt once and its continuations
        from there gives what folding the whole sequence gives, without the prompt's work."""
        for index in ids:
            index = int(index)
            if index in self._special_ids:
                continue
            token = self._added.get(index)
            if token is not None:
                content = token.content
            elif 0 <= index < self._size:
                content = self._sp.id_to_piece(index)
            else:
                continue  # ids beyond the vocabulary have no text (the model's vocabulary may be larger)
            if content in self._special_set:
                continue
            if content in self._standalone:
                # an added token that is not special stands alone between spaces
                if run:
                    text = self._pieces_to_text(run)
                    if text:
                        parts.append(text)
                    run = []
                parts.append(content)
            else:
                run.append(content)
        return parts, run

    def _joined(self, parts: list[str], run: list[str], run_text: str | None = None) -> str:
        """The text of a fold; `run_text`: the run's text where the caller has it."""
        if run:
            parts = [*parts, self._pieces_to_text(run) if run_text is None else run_text]
        text = " ".join(parts)
        return clean_up_spaces(text) if self._clean_up else text

    def _decode(self, ids: Sequence[int]) -> str:
        return self._joined(*self._fold(ids, [], []))

    def _decoder_after(self, prompt_ids: Sequence[int]) -> Callable[[Sequence[int]], str]:
        return _Folding(self, *self._fold(prompt_ids, [], []))


class _Folding:
    """decode(prompt + generated) from the prompt's fold, for a stream that asks again at every
    token with all of its tokens so far: the fold of the ids asked for last time is kept, so only
    the new ids are folded (a left fold folded in two steps is the fold of the whole), and the run
    of pieces the fold ends with (as a rule the prompt's and all the answer's) is decoded as a
    settled head and a tail (settled.py). Folding and decoding all of it at every token made a
    1,000-token answer's text cost 0.5 ms per token."""

    def __init__(self, tokenizer: SentencePieceTokenizer, parts: list[str], run: list[str]) -> None:
        self._tokenizer = tokenizer
        self._prompt = (parts, run)  # never changed: a call that does not extend the last starts here
        self._seen: list[int] = []  # the generated ids folded into _parts and _run
        self._parts, self._run = list(parts), list(run)
        self._settled = SettledText(tokenizer._run_raw, tokenizer._tail_raw, tokenizer._plain)

    def __call__(self, generated: Sequence[int]) -> str:
        ids = int_list(generated)
        new = new_ids(self._seen, ids)
        if new is None:
            self._seen.clear()
            self._parts, self._run = list(self._prompt[0]), list(self._prompt[1])
            new = ids
        if new:
            self._parts, self._run = self._tokenizer._fold(new, self._parts, self._run)
            self._seen.extend(int(i) for i in new)
        run, tokenizer = self._run, self._tokenizer
        raw = self._settled.text(run) if run else None
        return tokenizer._joined(self._parts, run, None if raw is None else tokenizer._run_text(raw))


def sentencepiece_tokenizer(
    files: TokenizerFiles, class_name: str, newline_token: str | None = None
) -> SentencePieceTokenizer:
    flavour = FLAVOURS[class_name]
    path = files.directory / flavour.model_file
    if not path.is_file():
        raise TokenizerError(
            f"{files.directory / 'tokenizer_config.json'} names {class_name}, which reads "
            f"{flavour.model_file}, and {path} does not exist"
        )
    return SentencePieceTokenizer(files, flavour, newline_token)


def is_sentencepiece_class(name: str | None) -> bool:
    return name is not None and name.removesuffix("Fast") in FLAVOURS
