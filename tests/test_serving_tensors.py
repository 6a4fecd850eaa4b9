"""FT tensor decoding/encoding used by the CPU twin (numpy only; the server tests cover the wire)."""

from __future__ import annotations

import numpy as np
import pytest

from ftprefix import protocol
from ftprefix.engine.api import GenerationRequest, GenerationResult
from ftprefix.serving import ft_tensors
from ftprefix.words import words_from_ft


def test_word_list_in_ft_format_decodes_to_token_sequences():
    # FT format (fastertransformer_backend word_list.py): flat ids, cumulative end offsets, -1 padding
    arr = np.array([[7, 8, 9, 0], [2, 3, -1, -1]], dtype=np.int32)
    assert words_from_ft(arr) == [[7, 8], [9]]
    assert words_from_ft(np.array([[0], [-1]], dtype=np.int32)) == []
    with pytest.raises(ValueError, match="offsets"):
        words_from_ft(np.array([[1, 2], [2, 1]], dtype=np.int32))


def test_rows_use_real_lengths_optional_inputs_and_ft_defaults():
    inputs = {
        protocol.INPUT_IDS: np.array([[1, 2, 3], [4, 5, 0]], dtype=np.uint32),
        protocol.INPUT_LENGTHS: np.array([3, 2], dtype=np.uint32),  # after `reshape: []`
        protocol.REQUEST_OUTPUT_LEN: np.array([[4], [6]], dtype=np.uint32),
        protocol.TASK_IDS: np.array([1, 0], dtype=np.uint32),
        protocol.RUNTIME_TOP_K: np.array([5, 1], dtype=np.uint32),
    }
    rows = ft_tensors.requests_from_tensors(inputs)
    assert [r.input_ids for r in rows] == [[1, 2, 3], [4, 5]]
    assert [r.request_output_len for r in rows] == [4, 6]
    assert [r.task_id for r in rows] == [1, 0]
    assert [r.top_k for r in rows] == [5, 1]
    assert rows[0].top_p == 0.0 and rows[0].temperature == 1.0 and rows[0].end_id is None

    del inputs[protocol.TASK_IDS]
    assert all(r.task_id is None for r in ft_tensors.requests_from_tensors(inputs))
    with pytest.raises(ft_tensors.BadRequest, match="input_lengths"):
        ft_tensors.requests_from_tensors({**inputs, protocol.INPUT_LENGTHS: np.array([9, 2], np.uint32)})
    with pytest.raises(ft_tensors.BadRequest, match="beam_width"):
        ft_tensors.requests_from_tensors({**inputs, "beam_width": np.array([2, 2], dtype=np.uint32)})


def test_outputs_follow_ft_layout():
    reqs = [GenerationRequest([1, 2, 3], 3), GenerationRequest([4, 5], 3, end_id=9)]
    results = [
        GenerationResult([1, 2, 3, 10, 11, 12], 6, [10, 11, 12], "length"),
        GenerationResult([4, 5, 20], 3, [20], "end_id"),
    ]
    padded = np.array([[1, 2, 3], [4, 5, 0]], dtype=np.uint32)
    out = ft_tensors.tensors_from_results(reqs, results, padded, default_end_id=0)
    assert out[protocol.OUTPUT_IDS].tolist() == [[[1, 2, 3, 10, 11, 12]], [[4, 5, 0, 20, 9, 9]]]
    assert out[protocol.SEQUENCE_LENGTH].tolist() == [[6], [4]]
    assert out[protocol.OUTPUT_IDS].dtype == np.uint32
    assert out[protocol.OUTPUT_LOG_PROBS].shape == (2, 1, 3)
