"""Triton python model `postprocessing`: FasterTransformer output ids -> text.

As in triton-inference-server/fastertransformer_backend all_models/gptneox/postprocessing, each beam's
output_ids are decoded up to its sequence_length, so OUTPUT [batch, beam] holds the prompt followed
by the generated text (FT returns the input tokens in output_ids).
"""

import json
from pathlib import Path

import ftprefix_site  # noqa: F401  (before numpy: the serving virtualenv goes on sys.path)
import numpy as np
import triton_python_backend_utils as pb_utils


def _param(config: dict, key: str, default: str = "") -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        config = json.loads(args["model_config"])
        path = Path(_param(config, "tokenizer_path", "tokenizer"))
        if not path.is_absolute():
            path = Path(args["model_repository"]) / args["model_version"] / path
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
            lengths = pb_utils.get_input_tensor_by_name(request, "sequence_length").as_numpy()
            texts = [
                [
                    self.tokenizer.decode(beam[: int(n)].tolist(), skip_special_tokens=True).encode("utf-8")
                    for beam, n in zip(row, row_lengths, strict=True)
                ]
                for row, row_lengths in zip(tokens, lengths, strict=True)
            ]
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("OUTPUT", np.array(texts, dtype=np.object_))]
                )
            )
        return responses
