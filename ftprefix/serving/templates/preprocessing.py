"""Triton python model `preprocessing`: text -> FasterTransformer token tensors.

Interface as triton-inference-server/fastertransformer_backend all_models/gptneox/preprocessing:
QUERY [batch, 1] text, REQUEST_OUTPUT_LEN, BAD_WORDS_DICT / STOP_WORDS_DICT [batch, 1] comma
separated words (CSV) -> INPUT_ID (rows padded with end_id), REQUEST_INPUT_LEN, BAD_WORDS_IDS and
STOP_WORDS_IDS in FT's word-list format [batch, 2, L] (flat ids; cumulative end offsets padded -1).
"""

import csv
import json
from pathlib import Path

import ftprefix_site  # noqa: F401  (before numpy: the serving virtualenv goes on sys.path)
import numpy as np
import triton_python_backend_utils as pb_utils


def _param(config: dict, key: str, default: str = "") -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def load_tokenizer(args: dict, config: dict):
    from transformers import AutoTokenizer

    path = Path(_param(config, "tokenizer_path", "tokenizer"))
    if not path.is_absolute():
        path = Path(args["model_repository"]) / args["model_version"] / path
    return AutoTokenizer.from_pretrained(str(path))


def word_list(tokenizer, rows) -> np.ndarray:
    """FT word list [batch, 2, L]: row 0 the flat token ids, row 1 the cumulative end offsets."""
    flat_ids, offsets = [], []
    for row in rows:
        text = row[0].decode("utf-8") if isinstance(row[0], bytes) else str(row[0])
        ids, ends = [], []
        for word in next(csv.reader([text]), []):
            word_ids = tokenizer.encode(word) if word else []
            if word_ids:
                ids.extend(word_ids)
                ends.append(len(ids))
        flat_ids.append(ids)
        offsets.append(ends)
    width = max(1, *(len(i) for i in flat_ids))
    out = np.zeros((len(flat_ids), 2, width), dtype=np.int32)
    out[:, 1, :] = -1
    for b, (ids, ends) in enumerate(zip(flat_ids, offsets, strict=True)):
        out[b, 0, : len(ids)] = ids
        out[b, 1, : len(ends)] = ends
    return out


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.tokenizer = load_tokenizer(args, config)
        end_id = _param(config, "end_id")
        self.end_id = int(end_id) if end_id else int(self.tokenizer.eos_token_id or 0)

    def execute(self, requests):
        responses = []
        for request in requests:
            query = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy()
            output_len = pb_utils.get_input_tensor_by_name(request, "REQUEST_OUTPUT_LEN").as_numpy()
            bad = pb_utils.get_input_tensor_by_name(request, "BAD_WORDS_DICT").as_numpy()
            stop = pb_utils.get_input_tensor_by_name(request, "STOP_WORDS_DICT").as_numpy()
            rows = [
                self.tokenizer.encode(q[0].decode("utf-8") if isinstance(q[0], bytes) else str(q[0]))
                for q in query
            ]
            width = max(1, *(len(r) for r in rows))
            input_ids = np.full((len(rows), width), self.end_id, dtype=np.uint32)
            for b, ids in enumerate(rows):
                input_ids[b, : len(ids)] = ids
            lengths = np.array([[len(r)] for r in rows], dtype=np.uint32)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("INPUT_ID", input_ids),
                        pb_utils.Tensor("REQUEST_INPUT_LEN", lengths),
                        pb_utils.Tensor("BAD_WORDS_IDS", word_list(self.tokenizer, bad)),
                        pb_utils.Tensor("STOP_WORDS_IDS", word_list(self.tokenizer, stop)),
                        pb_utils.Tensor("REQUEST_OUTPUT_LEN", output_len.astype(np.uint32)),
                    ]
                )
            )
        return responses
