"""Client pieces that need no server: tensor layouts, request planning, tokenizer, imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ftprefix import protocol
from ftprefix.client import InvalidRequestError, SamplingParams, UnknownTaskError
from ftprefix.client.model_info import ModelInfo
from ftprefix.client.plan import Plan
from ftprefix.client.tokenizer import ClientTokenizer
from ftprefix.client.wire import Row, ft_inputs, generated_ids
from ftprefix.demo import toy
from ftprefix.task_table import TaskTable
from ftprefix.words import batch_words_to_ft

ALL_INPUTS = frozenset(
    {
        protocol.INPUT_IDS,
        protocol.INPUT_LENGTHS,
        protocol.REQUEST_OUTPUT_LEN,
        protocol.RUNTIME_TOP_K,
        protocol.RUNTIME_TOP_P,
        protocol.TEMPERATURE,
        protocol.REPETITION_PENALTY,
        protocol.RANDOM_SEED,
        protocol.STOP_WORDS_LIST,
        protocol.TASK_IDS,
    }
)
INFO = ModelInfo(
    name=protocol.FT_MODEL,
    inputs=ALL_INPUTS,
    outputs=frozenset({protocol.OUTPUT_IDS, protocol.SEQUENCE_LENGTH}),
    decoupled=False,
    max_batch_size=2,
    tasks=TaskTable([("taskA", 4), ("taskB", 2)]),
)


def test_import_does_not_load_torch() -> None:
    code = (
        "import sys, ftprefix.client, ftprefix.commands.generate; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


def test_word_list_matches_ft_layout() -> None:
    # Row 0 has words [5, 6] and [7]; row 1 has [9]. FT: flat ids padded with 0,
    # cumulative end offsets padded with -1 (fastertransformer_backend .../word_list.py).
    out = batch_words_to_ft([[[5, 6], [7]], [[9]]])
    assert out.dtype == np.int32
    assert out.tolist() == [[[5, 6, 7], [2, 3, -1]], [[9, 0, 0], [1, -1, -1]]]
    assert batch_words_to_ft([[], []]).tolist() == [[[0], [-1]], [[0], [-1]]]


def test_ft_inputs_pad_rows_and_carry_task_ids() -> None:
    rows = [Row([3, 4, 5], task_id=1, stop_words=[[8]]), Row([6], task_id=0)]
    params = SamplingParams(max_new_tokens=7, temperature=0.5, top_k=3, top_p=0.9, seed=11)
    arrays = ft_inputs(rows, params, ALL_INPUTS, pad_id=2)
    assert arrays[protocol.INPUT_IDS].tolist() == [[3, 4, 5], [6, 2, 2]]
    assert arrays[protocol.INPUT_IDS].dtype == np.uint32
    assert arrays[protocol.INPUT_LENGTHS].tolist() == [[3], [1]]
    assert arrays[protocol.REQUEST_OUTPUT_LEN].tolist() == [[7], [7]]
    assert arrays[protocol.TASK_IDS].tolist() == [[1], [0]]
    assert arrays[protocol.RUNTIME_TOP_K].tolist() == [[3], [3]]
    assert arrays[protocol.RANDOM_SEED].dtype == np.uint64
    assert arrays[protocol.TEMPERATURE].dtype == np.float32
    assert arrays[protocol.STOP_WORDS_LIST].tolist() == [[[8], [1]], [[0], [-1]]]
    base = ft_inputs([Row([1])], params, ALL_INPUTS - {protocol.RUNTIME_TOP_K})
    assert protocol.TASK_IDS not in base and protocol.RUNTIME_TOP_K not in base


def test_generated_ids_cut_padded_input_and_fill() -> None:
    # FT: output_ids = input_ids as sent (rows padded to 3, pad 2 here) followed by the generated
    # tokens, the rest end_id (0); sequence_length = padded input width + generated count
    output_ids = np.array([[[3, 4, 5, 10, 11, 0, 0]], [[6, 2, 2, 20, 21, 22, 0]]], dtype=np.uint32)
    assert generated_ids(output_ids, np.array([[5], [6]]), 3) == [[10, 11], [20, 21, 22]]


def test_plan_rejects_unknown_task_and_bad_values() -> None:
    with pytest.raises(UnknownTaskError, match=r"'nope'.*taskA, taskB"):
        Plan.build([[1, 2]], "nope", SamplingParams(), None, INFO, None, use_ensemble=False)
    with pytest.raises(InvalidRequestError, match="max_new_tokens"):
        Plan.build([[1]], None, SamplingParams(max_new_tokens=0), None, INFO, None, use_ensemble=False)
    with pytest.raises(InvalidRequestError, match="empty prompt"):
        Plan.build([[]], None, SamplingParams(), None, INFO, None, use_ensemble=False)
    with pytest.raises(InvalidRequestError, match="2 task names"):
        Plan.build([[1]], ["taskA", "taskB"], SamplingParams(), None, INFO, None, use_ensemble=False)


def test_plan_splits_base_rows_from_task_rows_and_by_batch_limit() -> None:
    prompts = [[1], [2], [3], [4], [5]]
    tasks = ["taskA", None, "taskB", "taskA", None]
    plan = Plan.build(prompts, tasks, SamplingParams(), None, INFO, None, use_ensemble=False)
    groups = [(r.rows, r.arrays.get(protocol.TASK_IDS)) for r in plan.requests()]
    assert [g[0] for g in groups] == [[1, 4], [0, 2], [3]]  # max_batch_size 2
    assert groups[0][1] is None
    assert groups[1][1].tolist() == [[0], [1]]
    assert groups[2][1].tolist() == [[0]]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("tok")
    return directory, toy.build_tokenizer(directory)


def test_client_tokenizer_matches_hugging_face(tokenizer_dir) -> None:
    directory, hf = tokenizer_dir
    tok = ClientTokenizer(directory)
    for text in [*toy.TOY_SENTENCES[:4], "unseen wörds ✓"]:
        ids = tok.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    assert tok.eos_id == hf.eos_token_id
