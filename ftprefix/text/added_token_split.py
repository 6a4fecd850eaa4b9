"""Where a text is cut at added tokens, exactly as transformers' slow tokenizers cut it.

transformers (4.57, `tokenization_utils.py`, class `Trie`) scans the text once with a trie of the
added tokens' contents. Mostly that is the leftmost-longest match a regular expression would find,
but not always: when a later-starting token completes while an earlier-starting candidate has
already failed, the look-ahead still walks the earlier candidate's trie node from the character
after the failure, so a "match" can skip a character (tokens "xyz9" and "y" cut "xyQz9" as one
piece, which is then not an added token and goes to SentencePiece whole). Prefixes were trained on
those ids, so this reproduces the scan, quirks included, rather than a cleaner rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

END = ""  # marks a node where a whole token ends; never a character of the text

Node = dict[str, "Node"]


def build_trie(tokens: Iterable[str]) -> Node:
    root: Node = {}
    for token in tokens:
        if not token:
            continue
        node = root
        for char in token:
            node = node.setdefault(char, {})
        node[END] = {}
    return root


def _longest_from(
    text: str, position: int, active: dict[int, Node], found_start: int
) -> tuple[int, int, int]:
    """The match to cut at once a token started at `found_start` has ended before `position`:
    (start, end, where scanning resumes). Candidates that started no later are extended as far as
    the text lets them, each from where transformers' look-ahead takes it up."""
    start, end, resume = found_start, position, position
    for candidate_start, node in active.items():
        if candidate_start > start:
            break
        # an earlier candidate has already taken (or failed on) the current character
        look = position + 1 if candidate_start < start else position
        end_here = look
        if END in node:
            start, end_here, resume = candidate_start, look, look
        while look < len(text) and text[look] in node:
            node = node[text[look]]
            look += 1
            if END in node:
                start, end_here, resume = candidate_start, look, look
        if candidate_start == start:
            end = end_here
    return start, end, resume


class AddedTokenSplitter:
    """Cuts texts at a fixed set of added tokens (`split`)."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self.trie = build_trie(tokens)
        # where no candidate is open, scanning can jump to the next character that starts a token:
        # the scan does nothing at any other
        self._next_start = (
            re.compile("[" + "".join(re.escape(char) for char in self.trie) + "]").search
            if self.trie
            else None
        )

    def split(self, text: str) -> list[str]:
        """`text` cut into pieces at the added tokens (each token a piece of its own)."""
        return split_at_tokens(text, self.trie, self._next_start)


def split_at_tokens(
    text: str, trie: Node, next_start: Callable[[str, int], re.Match[str] | None] | None = None
) -> list[str]:
    """`text` cut into pieces at the added tokens `trie` holds (the tokens are pieces of their own).
    `next_start(text, i)`: the next character at or after i that starts a token (a speed-up)."""
    if not trie:
        return [text] if text else []
    cuts = [0]
    active: dict[int, Node] = {}
    resume = 0
    position = 0
    while position < len(text):
        if not active and next_start is not None:
            found = next_start(text, max(position, resume))
            if found is None:
                break
            position = found.start()
        elif resume and position < resume:
            position += 1
            continue
        char = text[position]
        failed: list[int] = []
        cut = False
        for start, node in active.items():
            if END in node:
                begin, end, resume = _longest_from(text, position, active, start)
                cuts += [begin, end]
                cut = True
                break
            if char in node:
                active[start] = node[char]
            else:
                failed.append(start)
        if cut:
            active = {}
        else:
            for start in failed:
                del active[start]
        if position >= resume and char in trie:
            active[position] = trie[char]
        position += 1
    for start, node in active.items():
        if END in node:
            cuts += [start, len(text)]
            break
    cuts.append(len(text))
    pieces: list[str] = []
    previous = 0
    for offset in cuts:
        if offset <= previous:  # transformers skips an offset that goes backwards
            continue
        pieces.append(text[previous:offset])
        previous = offset
    return pieces
