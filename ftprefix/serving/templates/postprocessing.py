"""Triton python model `postprocessing`: FasterTransformer output ids -> the generated text.

FT puts each row's own input tokens first and its generated tokens right after them, then fills
with end_id (docs/design.md, "What FT returns"); Triton may have batched this request with others,
so the padded width is not known here. The generated tokens are read as the client reads them
(ftprefix.ft_rows): at most REQUEST_OUTPUT_LEN tokens after the row's REQUEST_INPUT_LEN input
tokens, up to and including the first end_id. OUTPUT [batch, beam] is the text those tokens add
to the row's input (ftprefix.text: what `decode(input + generated)` adds after `decode(input)`),
exactly the client's and the OpenAI gateway's text.
"""

import ftprefix_site  # noqa: F401  (before numpy: the serving virtualenv goes on sys.path)
import numpy as np
import triton_python_backend_utils as pb_utils

from ftprefix.ft_rows import RowSpec, read_row
from ftprefix.serving.text_models import tokenizer_and_end_id


class TritonPythonModel:
    def initialize(self, args):
        self.tokenizer, self.end_id = tokenizer_and_end_id(args)

    def _text(self, beam: np.ndarray, input_length: int, output_length: int) -> bytes:
        answer = read_row(beam, RowSpec(input_length, output_length, self.end_id), final=True)
        prompt = [int(t) for t in beam[:input_length]]
        return self.tokenizer.continuation(prompt, answer.tokens).encode("utf-8")

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
            input_lengths = pb_utils.get_input_tensor_by_name(request, "REQUEST_INPUT_LEN").as_numpy()
            output_lengths = pb_utils.get_input_tensor_by_name(request, "REQUEST_OUTPUT_LEN").as_numpy()
            texts = [
                [self._text(beam, int(n[0]), int(np.max(k))) for beam in beams]
                for beams, n, k in zip(
                    tokens, input_lengths.reshape(len(tokens), -1), output_lengths, strict=True
                )
            ]
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("OUTPUT", np.array(texts, dtype=np.object_))]
                )
            )
        return responses
