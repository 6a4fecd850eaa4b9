"""Triton python model `postprocessing`: FasterTransformer output ids -> the generated text.

FT puts each row's own input tokens first and its generated tokens right after them, then fills
with end_id (see docs/design.md, "What FT returns"); Triton may have batched this request with
others, so the padded width is not known here. The generated tokens are therefore read as the
client reads them: at most REQUEST_OUTPUT_LEN tokens after the row's REQUEST_INPUT_LEN input
tokens, up to and including the first end_id. OUTPUT [batch, beam] holds their text only.
"""

import json

import ftprefix_site  # noqa: F401  (before numpy: the serving virtualenv goes on sys.path)
import numpy as np
import triton_python_backend_utils as pb_utils


def _param(config: dict, key: str, default: str = "") -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def generated_tokens(row: np.ndarray, input_length: int, output_length: int, end_id: int) -> list[int]:
    window = [int(t) for t in row[input_length : input_length + output_length]]
    return window[: window.index(end_id) + 1] if end_id in window else window


class TritonPythonModel:
    def initialize(self, args):
        from pathlib import Path

        from transformers import AutoTokenizer

        config = json.loads(args["model_config"])
        path = Path(_param(config, "tokenizer_path", "tokenizer"))
        if not path.is_absolute():
            path = Path(args["model_repository"]) / args["model_version"] / path
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        end_id = _param(config, "end_id")
        self.end_id = int(end_id) if end_id else int(self.tokenizer.eos_token_id or 0)

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
            input_lengths = pb_utils.get_input_tensor_by_name(request, "REQUEST_INPUT_LEN").as_numpy()
            output_lengths = pb_utils.get_input_tensor_by_name(request, "REQUEST_OUTPUT_LEN").as_numpy()
            texts = []
            for beams, n, k in zip(
                tokens, input_lengths.reshape(len(tokens), -1), output_lengths, strict=True
            ):
                ids = [generated_tokens(beam, int(n[0]), int(np.max(k)), self.end_id) for beam in beams]
                texts.append(
                    [self.tokenizer.decode(i, skip_special_tokens=True).encode("utf-8") for i in ids]
                )
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("OUTPUT", np.array(texts, dtype=np.object_))]
                )
            )
        return responses
