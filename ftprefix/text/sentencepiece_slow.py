"""SentencePiece models with the semantics of Hugging Face's slow `T5Tokenizer` / `LlamaTokenizer`.

rinna's japanese-gpt-neox models (and LINE's japanese-large-lm) ship `spiece.model` with
`"tokenizer_class": "T5Tokenizer"`, loaded with `use_fast=False` by their model cards and by rinna's
prefix-tuning code; GPT-NeoX models such as japanese-stablelm-base-alpha ship `tokenizer.model`
with `LlamaTokenizer`. Every prefix was trained on the ids these classes give, so this reproduces
them with the `sentencepiece` package alone (transformers 4.57, `tokenization_utils.py`,
`models/t5/tokenization_t5.py`, `models/llama/tokenization_llama.py`; legacy mode, their default):

- encode: the text is split at added tokens (special tokens such as `</s>`, leftmost-longest
  match, honouring each token's lstrip / rstrip / single_word); each added token is its own id
  and each piece of text between them is encoded by SentencePiece on its own, so it gets its own
  leading `▁`.
- decode (skipping special tokens): ids become pieces; runs of pieces are decoded by
  SentencePiece (a leading `▁` of the first piece dropped), added tokens that are not special
  stand alone, and the parts are joined with spaces; T5 strips the result, Llama does not; then
  the optional clean-up of spaces before punctuation.

`legacy: false` (a different, protobuf-patched model) is refused rather than approximated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ftprefix.text.base import Tokenizer
from ftprefix.text.files import NAMED_SPECIAL_TOKENS, TokenizerError, TokenizerFiles, TokenSpec

UNDERLINE = "\u2581"  # SentencePiece's word boundary, "▁"


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
        if files.config.get("legacy") is False:
            raise TokenizerError(
                f"{where} sets legacy: false, a tokenisation ftprefix does not reproduce (it reproduces "
                f"the legacy {flavour.name}, transformers' default)"
            )
        if files.config.get("sp_model_kwargs"):
            raise TokenizerError(f"{where} sets sp_model_kwargs, which ftprefix does not reproduce")
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.Load(str(path))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"{path} is not a SentencePiece model ({flavour.name}): {exc}") from None
        super().__init__(path, f"{flavour.model_file}, {flavour.name} (slow, legacy)", files, newline_token)
        self._flavour = flavour
        self._size = self._sp.get_piece_size()
        self._add_prefix_space = files.flag("add_prefix_space", True)
        self._clean_up = files.flag("clean_up_tokenization_spaces", False)
        self._added, specials = self._added_tokens(files, flavour, where)
        self._by_content = {token.content: index for index, token in self._added.items()}
        self._special_ids = {self.token_to_id(s.content) for s in specials} - {None}
        self._matcher = (
            re.compile("|".join(re.escape(c) for c in sorted(self._by_content, key=len, reverse=True)))
            if self._by_content
            else None
        )

    # -- added tokens, as PreTrainedTokenizer.__init__ and T5Tokenizer.__init__ build them --------

    def _added_tokens(
        self, files: TokenizerFiles, flavour: Flavour, where: str
    ) -> tuple[dict[int, TokenSpec], list[TokenSpec]]:
        added: dict[int, TokenSpec] = {}
        extra_ids = int(files.config.get("extra_ids", flavour.default_extra_ids) or 0)
        additional = files.additional_special()
        extra: list[TokenSpec] = []
        if extra_ids and not any("<extra_id_" in t.content for t in additional):
            extra = [TokenSpec(f"<extra_id_{i}>", lstrip=True, rstrip=True) for i in range(extra_ids)]
            for i, token in enumerate(extra):
                added[self._size - 1 + extra_ids - i] = token
        added.update(files.added_tokens)
        named = []
        for name in NAMED_SPECIAL_TOKENS:
            spec = files.special(name)
            if spec is None and name not in files.config and flavour.defaults.get(name):
                spec = TokenSpec(str(flavour.defaults[name]))
            if spec is not None:
                named.append(spec)
        specials = [*named, *additional, *extra]
        contents = {t.content for t in added.values()}
        for spec in specials:
            if spec.content in contents:
                continue
            index = self._sp.piece_to_id(spec.content)
            if self._sp.id_to_piece(index) != spec.content:
                raise TokenizerError(
                    f"{where}: special token {spec.content!r} is not a piece of {flavour.model_file}; "
                    "ftprefix cannot tell which id Hugging Face would give it"
                )
            added[index] = spec
            contents.add(spec.content)
        for token in added.values():
            if token.single_word:
                raise TokenizerError(
                    f"{where}: added token {token.content!r} is single_word, which ftprefix does not "
                    "reproduce"
                )
        return added, specials

    @property
    def vocab_size(self) -> int:
        return max([self._size - 1, *self._added]) + 1

    def token_to_id(self, token: str) -> int | None:
        if token in self._by_content:
            return self._by_content[token]
        index = self._sp.piece_to_id(token)
        return index if self._sp.id_to_piece(index) == token else None

    # -- encode -----------------------------------------------------------------------------------

    def _split(self, text: str) -> list[str | int]:
        """Text pieces and added-token ids, with each added token's whitespace rules applied."""
        if self._matcher is None:
            return [text]
        parts: list[str | int] = []
        start = 0
        for match in self._matcher.finditer(text):
            parts.append(text[start : match.start()])
            parts.append(self._by_content[match.group()])
            start = match.end()
        parts.append(text[start:])
        for i, part in enumerate(parts):
            if isinstance(part, int):
                token = self._added[part]
                if token.rstrip and i + 1 < len(parts) and isinstance(parts[i + 1], str):
                    parts[i + 1] = str(parts[i + 1]).lstrip()
                if token.lstrip and i > 0 and isinstance(parts[i - 1], str):
                    parts[i - 1] = str(parts[i - 1]).rstrip()
        return [p for p in parts if p != ""]

    def _encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in self._split(text):
            if isinstance(part, int):
                ids.append(part)
                continue
            for piece in self._sp.encode(part, out_type=str):
                index = self._by_content.get(piece)
                ids.append(index if index is not None else self._sp.piece_to_id(piece))
        return ids

    # -- decode -----------------------------------------------------------------------------------

    def _pieces_to_text(self, pieces: list[str]) -> str:
        if self._add_prefix_space and pieces[0].startswith(UNDERLINE):
            pieces = [pieces[0][1:], *pieces[1:]]
        text = self._sp.decode(pieces)
        return text.strip() if self._flavour.strip_decoded else text

    def _decode(self, ids: Sequence[int]) -> str:
        parts: list[str] = []
        run: list[str] = []
        for index in ids:
            index = int(index)
            if index in self._special_ids:
                continue
            token = self._added.get(index)
            if token is not None:
                # an added token that is not one of the special tokens stands alone between spaces
                if run:
                    text = self._pieces_to_text(run)
                    if text:
                        parts.append(text)
                    run = []
                parts.append(token.content)
            elif 0 <= index < self._size:
                run.append(self._sp.id_to_piece(index))
            # ids beyond the vocabulary have no text (the model's vocabulary may be larger)
        if run:
            parts.append(self._pieces_to_text(run))
        text = " ".join(parts)
        return clean_up_spaces(text) if self._clean_up else text


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
