"""Text <-> token ids exactly as the model was trained: one implementation for every text path.

The client (sync, async, streaming), `ftprefix generate`, the OpenAI gateway and the Triton
`preprocessing` / `postprocessing` models (CPU twin and GPU image) all use `load_tokenizer`. It
needs only the standard library, `tokenizers` and `sentencepiece`: no torch, no transformers, no
tritonclient, so the GPU image installs ftprefix's core package for it.
"""

from ftprefix.text.base import Continuation, Tokenizer
from ftprefix.text.files import TokenizerError
from ftprefix.text.load import TOKENIZER_FILES, copy_tokenizer_files, load_tokenizer

__all__ = [
    "TOKENIZER_FILES",
    "Continuation",
    "Tokenizer",
    "TokenizerError",
    "copy_tokenizer_files",
    "load_tokenizer",
]
