"""What the text of a stream costs per token: a completion's text is what decode(prompt + generated)
adds after decode(prompt), asked again at every streamed token (client, gateway, postprocessing).

Side by side in one run, for prompts of several lengths: `Tokenizer.continuing(prompt)` (what
streams use: the text of prompt + answer up to the last plain token kept, so that only the tokens
since are decoded again, `ftprefix/text/settled.py`; a SentencePiece tokenizer also folds each new
id into its text once) and decoding prompt + generated whole at every token (what every token of
a tokenizer.json tokenizer cost before, and much of what a SentencePiece one did). Random ids; by default
the rinna-style SentencePiece tokenizer of the tests (T5Tokenizer, slow), or any tokenizer
directory (`--tokenizer`), or a byte-level BPE tokenizer.json as GPT-NeoX and Pythia ship
(`--byte-level`, trained on the demo's sentences); the best of the rounds, in microseconds per
streamed token. The two must give the same text at every token, or the run stops.

    .venv/bin/python benchmarks/streamed_text.py [--prompts 50 500 2000] [--generated 100]
        [--rounds 5] [--tokenizer DIR | --byte-level]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ftprefix.text import load_tokenizer
from ftprefix.text.base import Tokenizer, common_prefix_length

TOKENIZER = (
    Path(__file__).resolve().parents[1] / "tests" / "data" / "tokenizers" / "rinna-style-sentencepiece"
)


def whole_every_token(tokenizer: Tokenizer, prompt: list[int]) -> Callable[[Sequence[int]], str]:
    before = tokenizer.decode(prompt)

    def text(generated: Sequence[int]) -> str:
        full = tokenizer.decode([*prompt, *generated])
        return full[common_prefix_length(before, full) :]

    return text


def per_token_us(
    make: Callable[[], Callable[[Sequence[int]], str]], generated: list[int], rounds: int
) -> float:
    best = float("inf")
    for _ in range(rounds):
        text = make()
        start = time.perf_counter()
        for k in range(1, len(generated) + 1):
            text(generated[:k])
        best = min(best, (time.perf_counter() - start) / len(generated))
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, nargs="+", default=[50, 500, 2000], metavar="IDS")
    parser.add_argument("--generated", type=int, default=100, metavar="IDS")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER, metavar="DIR")
    parser.add_argument(
        "--byte-level",
        action="store_true",
        help="a byte-level BPE tokenizer.json (GPT-NeoX's kind), trained here on the demo's sentences",
    )
    args = parser.parse_args()
    if args.byte_level:
        from ftprefix.demo import toy

        with tempfile.TemporaryDirectory() as directory:
            toy.build_tokenizer(directory, vocab_size=400)
            tokenizer = load_tokenizer(directory)
    else:
        tokenizer = load_tokenizer(args.tokenizer)
    rng = random.Random(0)
    ids = range(5, tokenizer.vocab_size)
    print(f"tokenizer: {tokenizer.description}; {args.generated} generated ids, best of {args.rounds}")
    print("| prompt ids | continuing(prompt) us/token | decode whole every token us/token | ratio |")
    print("|---|---|---|---|")
    for length in args.prompts:
        prompt = [rng.choice(ids) for _ in range(length)]
        generated = [rng.choice(ids) for _ in range(args.generated)]
        stream, whole = tokenizer.continuing(prompt), whole_every_token(tokenizer, prompt)
        for k in range(1, len(generated) + 1):
            if stream.text(generated[:k]) != whole(generated[:k]):
                raise SystemExit(f"the two ways disagree at token {k} after {length} ids: a bug")
        new = per_token_us(lambda p=prompt: tokenizer.continuing(p).text, generated, args.rounds)
        old = per_token_us(lambda p=prompt: whole_every_token(tokenizer, p), generated, args.rounds)
        print(f"| {length} | {new:.1f} | {old:.1f} | {old / new:.1f}x |")


if __name__ == "__main__":
    main()
