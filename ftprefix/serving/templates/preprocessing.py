"""Triton python model `preprocessing`: text -> FasterTransformer token tensors.

Interface as triton-inference-server/fastertransformer_backend all_models/gptneox/preprocessing:
QUERY [batch, 1] text, REQUEST_OUTPUT_LEN, BAD_WORDS_DICT / STOP_WORDS_DICT [batch, 1] comma
separated words (CSV) -> INPUT_ID (rows padded with end_id), REQUEST_INPUT_LEN, BAD_WORDS_IDS and
STOP_WORDS_IDS in FT's word-list format [batch, 2, L] (ftprefix.words).

Tokenising is ftprefix.text, the one implementation the client and the OpenAI gateway use: the ids
are those the model was trained with (Hugging Face's `encode(text, add_special_tokens=False)`;
SentencePiece models as the slow tokenizer encodes them). It needs ftprefix's core package, which
the CPU server finds in its virtualenv and the GPU image installs (no torch there).
"""

import csv

import ftprefix_site  # noqa: F401  (before numpy: the serving virtualenv goes on sys.path)
import numpy as np
import triton_python_backend_utils as pb_utils

from ftprefix.serving.text_models import tokenizer_and_end_id
from ftprefix.words import batch_words_to_ft


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def word_lists(tokenizer, rows) -> np.ndarray:
    """One CSV line of words per row (FT's word_list.py format) -> FT's [batch, 2, L] word lists."""
    return batch_words_to_ft(
        [
            [ids for word in next(csv.reader([_text(row[0])]), []) if (ids := tokenizer.encode_word(word))]
            for row in rows
        ]
    )


class TritonPythonModel:
    def initialize(self, args):
        self.tokenizer, self.end_id = tokenizer_and_end_id(args)

    def execute(self, requests):
        responses = []
        for request in requests:
            query = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy()
            output_len = pb_utils.get_input_tensor_by_name(request, "REQUEST_OUTPUT_LEN").as_numpy()
            bad = pb_utils.get_input_tensor_by_name(request, "BAD_WORDS_DICT").as_numpy()
            stop = pb_utils.get_input_tensor_by_name(request, "STOP_WORDS_DICT").as_numpy()
            rows = [self.tokenizer.encode(_text(q[0])) for q in query]
            if not all(rows):
                # one-argument TritonError: the GPU image's python backend (23.05) has no error codes
                error = pb_utils.TritonError("a prompt encodes to no tokens; FT needs at least one")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            width = max(len(r) for r in rows)
            input_ids = np.full((len(rows), width), self.end_id, dtype=np.uint32)
            for b, ids in enumerate(rows):
                input_ids[b, : len(ids)] = ids
            lengths = np.array([[len(r)] for r in rows], dtype=np.uint32)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("INPUT_ID", input_ids),
                        pb_utils.Tensor("REQUEST_INPUT_LEN", lengths),
                        pb_utils.Tensor("BAD_WORDS_IDS", word_lists(self.tokenizer, bad)),
                        pb_utils.Tensor("STOP_WORDS_IDS", word_lists(self.tokenizer, stop)),
                        pb_utils.Tensor("REQUEST_OUTPUT_LEN", output_len.astype(np.uint32)),
                    ]
                )
            )
        return responses
