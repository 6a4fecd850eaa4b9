"""Client pieces that need no server: tensor layouts, request planning, reading FT's answers, tokenizer.

The reading tests feed the output tensors recorded from real FasterTransformer (tests/data/
ft-golden) to the client's parsing code, so it is checked against what a GPU server returns, not
only against ftprefix's own server.
"""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from dataclasses import fields

import numpy as np
import pytest
from golden import all_scenarios

from ftprefix import protocol
from ftprefix.client import GenerationParams, InvalidRequestError, MalformedResponseError, UnknownTaskError
from ftprefix.client.model_info import ModelInfo
from ftprefix.client.plan import Plan
from ftprefix.client.types import GenerateOptions
from ftprefix.client.wire import Row, RowSpec, ft_inputs, read_rows
from ftprefix.demo import toy
from ftprefix.task_table import TaskTable
from ftprefix.text import load_tokenizer
from ftprefix.words import batch_words_to_ft

ALL_INPUTS = frozenset(t.name for t in protocol.FT_INPUTS)
INFO = ModelInfo(
    name=protocol.FT_MODEL,
    inputs=ALL_INPUTS,
    outputs=frozenset({protocol.OUTPUT_IDS, protocol.SEQUENCE_LENGTH}),
    decoupled=False,
    max_batch_size=2,
    tasks=TaskTable([("taskA", 4), ("taskB", 2)]),
    end_id=0,
)


def test_import_does_not_load_torch() -> None:
    code = (
        "import sys, ftprefix.client, ftprefix.commands.generate; from ftprefix.client import Client; "
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
    rows = [Row([3, 4, 5], task_id=1, stop_words=[[8]], bad_words=[[6, 7]]), Row([6], task_id=0)]
    params = GenerationParams(max_new_tokens=7, temperature=0.5, top_k=3, top_p=0.9, seed=11)
    arrays = ft_inputs(rows, params, ALL_INPUTS, end_id=9, pad_id=2)
    assert arrays[protocol.INPUT_IDS].tolist() == [[3, 4, 5], [6, 2, 2]]
    assert arrays[protocol.INPUT_IDS].dtype == np.uint32
    assert arrays[protocol.INPUT_LENGTHS].tolist() == [[3], [1]]
    assert arrays[protocol.REQUEST_OUTPUT_LEN].tolist() == [[7], [7]]
    assert arrays[protocol.TASK_IDS].tolist() == [[1], [0]]
    assert arrays[protocol.RUNTIME_TOP_K].tolist() == [[3], [3]]
    assert arrays[protocol.END_ID].tolist() == [[9], [9]]
    assert arrays[protocol.RANDOM_SEED].dtype == np.uint64
    assert arrays[protocol.TEMPERATURE].dtype == np.float32
    assert arrays[protocol.STOP_WORDS_LIST].tolist() == [[[8], [1]], [[0], [-1]]]
    assert arrays[protocol.BAD_WORDS_LIST].tolist() == [[[6, 7], [2, -1]], [[0, 0], [-1, -1]]]
    base = ft_inputs([Row([1])], params, ALL_INPUTS - {protocol.RUNTIME_TOP_K})
    assert protocol.TASK_IDS not in base and protocol.RUNTIME_TOP_K not in base


def test_options_name_exactly_the_generation_params() -> None:
    assert set(typing.get_type_hints(GenerateOptions)) == {f.name for f in fields(GenerationParams)}
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_tokens'"):
        GenerationParams.from_options({"max_tokens": 3})


# -- reading what real FT returned ---------------------------------------------------------------


def _specs(scenario, max_new_tokens=None) -> list[RowSpec]:
    stop = [scenario.raw["stop_words"]] if scenario.raw["stop_words"] else []
    return [
        RowSpec(len(r["ids"]), max_new_tokens or r["request_output_len"], scenario.raw["end_id"], stop)
        for r in scenario.rows
    ]


def _tensors(entry: dict) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(entry["output_ids"], dtype=np.uint32)[:, None, :]
    return ids, np.asarray(entry["sequence_length"], dtype=np.uint32)[:, None]


def _final(scenario) -> dict:
    return {
        "output_ids": scenario.raw["ft_output_ids"],
        "sequence_length": scenario.raw["ft_sequence_length"],
    }


@pytest.mark.parametrize("scenario", all_scenarios(), ids=lambda s: f"{s.model}-{s.name}")
def test_reads_real_ft_answers_trimmed_to_the_request(scenario) -> None:
    answers = read_rows(*_tensors(_final(scenario)), _specs(scenario), final=True)
    for b, answer in enumerate(answers):
        assert answer.tokens == scenario.expected(b)
        assert answer.finish_reason is not None


@pytest.mark.parametrize("scenario", all_scenarios(), ids=lambda s: f"{s.model}-{s.name}")
def test_reads_real_ft_streamed_answers_as_prefixes_of_the_final(scenario) -> None:
    previous = [0] * len(scenario.rows)
    for entry in scenario.raw["ft_stream"]:
        answers = read_rows(*_tensors(entry), _specs(scenario), final=False)
        for b, answer in enumerate(answers):
            assert answer.tokens == scenario.expected(b)[: len(answer.tokens)]
            assert len(answer.tokens) >= previous[b]
            previous[b] = len(answer.tokens)


def test_the_padded_row_the_old_reader_got_wrong() -> None:
    # FT's answer for a batch padded to width 7: the 2-token row's tokens come right after its input
    scenario = next(s for s in all_scenarios() if s.model.startswith("g1") and s.name == "padded_mixed_tasks")
    answers = read_rows(*_tensors(_final(scenario)), _specs(scenario), final=True)
    assert answers[2].tokens == [144, 217, 217, 217, 217, 241]
    assert answers[2].finish_reason == "length"


def test_a_merged_batch_wider_than_the_request_reads_the_same() -> None:
    # Triton merged the request with a longer one: wider rows, a larger W, and k + 1 tokens
    scenario = next(
        s for s in all_scenarios() if s.model.startswith("g1") and s.name == "mixed_request_output_len"
    )
    ids, lengths = _tensors(_final(scenario))
    answers = read_rows(ids[2:], lengths[2:], _specs(scenario)[2:], final=True)  # row asked for 4, got 5
    assert answers[0].tokens == scenario.ft_generated(2)[:4] and len(scenario.ft_generated(2)) == 5


def test_a_server_echoing_padding_is_refused_not_misread() -> None:
    # the layout ftprefix's old twin produced: padded input as sent (padding = end_id 9), generated
    # tokens from W = 3 on; read as FT's layout, row 1 would seem to end at once
    output_ids = np.array([[[3, 4, 5, 10, 11, 12]], [[6, 9, 9, 20, 21, 22]]], dtype=np.uint32)
    lengths = np.array([[6], [6]], dtype=np.uint32)
    specs = [RowSpec(3, 3, 9), RowSpec(1, 3, 9)]
    with pytest.raises(MalformedResponseError, match="row 1"):
        read_rows(output_ids, lengths, specs, final=True)


def test_plan_rejects_unknown_task_and_bad_values() -> None:
    params = GenerationParams()
    with pytest.raises(UnknownTaskError, match=r"'nope'.*'taskA', 'taskB'"):
        Plan.build([[1, 2]], "nope", params, INFO, None)
    with pytest.raises(InvalidRequestError, match="max_new_tokens"):
        GenerationParams.from_options({"max_new_tokens": 0})
    with pytest.raises(InvalidRequestError, match="empty prompt"):
        Plan.build([[]], None, params, INFO, None)
    with pytest.raises(InvalidRequestError, match="2 task names"):
        Plan.build([[1]], ["taskA", "taskB"], params, INFO, None)


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        # generate(["a", "b"]): a list of prompts where one belongs
        ([["Q: cat?", "Q: dog?"]], r"got 'Q: cat\?' in a prompt \(several prompts go to generate_batch"),
        ([["12", "13"]], "token ids are integers, got '12' in a prompt"),  # were sent as ids 12, 13
        ("Q: cat?", "prompts is one string"),  # generate_batch("..."): each character was a prompt
        ([1, 2, 3], r"got 1 \(a prompt's ids go in a list of their own"),
        ([[1.0, 2]], "token ids are integers, got 1.0"),
        ([[True, 2]], "token ids are integers, got True"),
    ],
)
def test_a_prompt_that_is_neither_text_nor_token_ids_is_refused_saying_what_it_is(prompts, message) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        Plan.build(prompts, None, GenerationParams(), INFO, None)


def test_numpy_integers_are_token_ids_and_a_word_s_ids_are_checked_as_a_prompt_s() -> None:
    plan = Plan.build([np.array([5, 6], dtype=np.int64)], None, GenerationParams(), INFO, None)
    assert plan.requests()[0].arrays[protocol.INPUT_IDS].tolist() == [[5, 6]]
    with pytest.raises(InvalidRequestError, match=r"got 'x' in a stop or bad word$"):
        Plan.build([[1, 2]], None, GenerationParams(stop=[[3, "x"]]), INFO, None)


def test_plan_splits_base_rows_from_task_rows_and_by_batch_limit() -> None:
    prompts = [[1], [2], [3], [4], [5]]
    tasks = ["taskA", None, "taskB", "taskA", None]
    plan = Plan.build(prompts, tasks, GenerationParams(), INFO, None)
    groups = [(r.rows, r.arrays.get(protocol.TASK_IDS)) for r in plan.requests()]
    assert [g[0] for g in groups] == [[1, 4], [0, 2], [3]]  # max_batch_size 2
    assert groups[0][1] is None
    assert groups[1][1].tolist() == [[0], [1]]
    assert groups[2][1].tolist() == [[0]]


def test_a_seed_per_prompt_goes_with_its_row_into_whichever_request_carries_it() -> None:
    prompts = [[1], [2], [3], [4], [5]]
    tasks = ["taskA", None, "taskB", "taskA", None]
    params = GenerationParams.from_options({"seed": np.array([10, 11, 12, 13, 2**64 - 1], dtype=np.uint64)})
    requests = Plan.build(prompts, tasks, params, INFO, None).requests()
    assert [r.rows for r in requests] == [[1, 4], [0, 2], [3]]
    seeds = [r.arrays[protocol.RANDOM_SEED] for r in requests]
    assert [s.tolist() for s in seeds] == [[[11], [2**64 - 1]], [[10], [12]], [[13]]]
    assert all(s.dtype == np.uint64 for s in seeds)
    one = Plan.build(prompts, tasks, GenerationParams(seed=7), INFO, None).requests()
    assert [r.arrays[protocol.RANDOM_SEED].tolist() for r in one] == [[[7], [7]], [[7], [7]], [[7]]]


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        ([1, 2], "got 3 prompts but 2 seeds; give one seed per prompt"),
        ([1, -1, 2], r"seed must be within \[0, 2\*\*64\), got -1"),
        (2**64, r"seed must be within \[0, 2\*\*64\), got 18446744073709551616"),
        (1.5, "seed must be an integer, or a sequence of one per prompt, got 1.5"),
        ([1, 2.0, 3], "seed must be an integer, or a sequence of one per prompt"),
    ],
)
def test_bad_seeds_are_refused_before_anything_is_sent(seed, message) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        params = GenerationParams.from_options({"seed": seed})
        Plan.build([[1], [2], [3]], None, params, INFO, None)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("tok")
    return directory, toy.build_tokenizer(directory)


def test_client_tokenizer_matches_hugging_face(tokenizer_dir) -> None:
    directory, hf = tokenizer_dir
    tok = load_tokenizer(directory)
    for text in [*toy.TOY_SENTENCES[:4], "unseen wörds ✓"]:
        ids = tok.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    assert tok.eos_id == hf.eos_token_id


def _ft_answer(prompt: list[int], generated: list[int], end_id: int, width: int) -> dict[str, np.ndarray]:
    """One row as FT returns it: the row's input, its generated tokens, then end_id fill."""
    ids = np.full((1, 1, width), end_id, dtype=np.uint32)
    ids[0, 0, : len(prompt) + len(generated)] = [*prompt, *generated]
    length = np.array([[len(prompt) + len(generated)]], dtype=np.uint32)
    return {protocol.OUTPUT_IDS: ids, protocol.SEQUENCE_LENGTH: length}


def test_text_ends_at_a_stop_string_the_tokens_did_not_match() -> None:
    from sentencepiece_reference import RINNA

    from ftprefix.client.plan import ChunkMaker, Collector

    tokenizer = load_tokenizer(RINNA)
    info = ModelInfo(INFO.name, INFO.inputs, INFO.outputs, False, 8, INFO.tasks, end_id=3)
    generated = tokenizer.encode("世界です。今日は晴れ")
    params = GenerationParams(max_new_tokens=len(generated), stop=["界で"])
    plan = Plan.build(["こんにちは"], None, params, info, tokenizer)
    prompt = plan.rows[0].input_ids
    answer = _ft_answer(prompt, generated, 3, len(prompt) + len(generated))
    ((_, done),) = Collector(plan, plan.requests()[0]).completions(answer)
    # FT's stop ids for "界で" (encoded alone: 界, で) differ from the ids inside the sentence (界,
    # です), so FT went on; the text is cut before the stop string, the tokens where it was complete
    assert done.text == " 世" and done.finish_reason == "stop_words"
    assert tokenizer.continuation(prompt, done.token_ids) == " 世界です"
    assert len(done.token_ids) < len(generated)
    # streamed one token at a time, the chunks add up to the same text and tokens
    maker, chunks = ChunkMaker(plan), []
    for k in range(1, len(generated) + 1):
        chunk = maker.update(_ft_answer(prompt, generated[:k], 3, len(prompt) + len(generated)), final=False)
        chunks += [chunk] if chunk is not None else []
        if maker.finished:
            break
    assert "".join(c.text or "" for c in chunks) == done.text
    assert [t for c in chunks for t in c.token_ids] == done.token_ids
    assert chunks[-1].finish_reason == "stop_words"


def test_one_string_is_one_stop_word_as_openai_takes_it() -> None:
    from sentencepiece_reference import RINNA

    tokenizer = load_tokenizer(RINNA)
    one, listed = (
        Plan.build(["こんにちは"], None, GenerationParams(stop=stop, bad_words=stop), INFO, tokenizer)
        for stop in ("界で", ["界で"])
    )
    assert len(listed.rows[0].stop_words) == len(listed.rows[0].bad_words) == 1
    assert one.rows[0].stop_words == listed.rows[0].stop_words  # not 界 and で, each a word
    assert one.rows[0].bad_words == listed.rows[0].bad_words
    assert one.stop_strings == listed.stop_strings == ["界で"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(lambda c: c.generate([1.5, 2]), "token ids are integers, got 1.5", id="a-float-id"),
        pytest.param(
            lambda c: c.generate_batch("Q: cat?"), "prompts is one string", id="one-string-as-prompts"
        ),
        pytest.param(lambda c: c.generate_batch([]), "no prompts given", id="no-prompts"),
        pytest.param(
            lambda c: c.generate([1, 2], stop=[[3, "x"]]),
            r"got 'x' in a stop or bad word$",
            id="text-among-stop-ids",
        ),
        pytest.param(
            lambda c: c.generate([1, 2], bad_words=[[2**31]]),
            "does not fit FT's int32",
            id="bad-word-id-past-int32",
        ),
        pytest.param(
            lambda c: list(c.stream([[1, 2]])), r"got \[1, 2\] in a prompt", id="a-list-of-prompts-to-stream"
        ),
    ],
)
def test_a_malformed_call_is_refused_before_the_client_connects(call, message) -> None:
    from ftprefix.client import Client
    from ftprefix.serving.server import free_port

    # nothing listens there: a call that connected first would fail with ServerUnavailableError
    with (
        Client(f"127.0.0.1:{free_port()}", connect_retries=0) as client,
        pytest.raises(InvalidRequestError, match=message),
    ):
        call(client)


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), True, "5"])
def test_a_timeout_that_is_no_wait_is_refused_when_the_client_is_made(timeout) -> None:
    """0 and below timed every request out at once, as a timeout error blaming the server."""
    from ftprefix.client import AsyncClient, Client

    for make in (Client, AsyncClient):
        with pytest.raises(InvalidRequestError, match="timeout must be a number of seconds more than 0"):
            make("127.0.0.1:1", timeout=timeout)


def test_a_timeout_is_any_real_number_of_seconds_and_inf_or_none_waits_forever() -> None:
    import numpy as np

    from ftprefix.client import AsyncClient, Client

    seconds, forever = (2, 0.5, np.int64(3), np.float32(1.5)), (None, float("inf"), 1e10)
    for make in (Client, AsyncClient):
        assert [make("127.0.0.1:1", timeout=t).timeout for t in seconds] == [2.0, 0.5, 3.0, 1.5]
        assert [make("127.0.0.1:1", timeout=t).timeout for t in forever] == [None, None, None]


def test_the_async_client_refuses_a_malformed_call_before_it_connects() -> None:
    import asyncio

    from ftprefix.client import AsyncClient
    from ftprefix.serving.server import free_port

    async def call() -> None:
        async with AsyncClient(f"127.0.0.1:{free_port()}", connect_retries=0) as client:
            await client.generate([True, 2])

    with pytest.raises(InvalidRequestError, match="token ids are integers, got True"):
        asyncio.run(call())


# float32's edges: its smallest subnormal is 2**-149, half of it rounds to 0; its largest finite
# value is (2 - 2**-23) * 2**127, and from (2 - 2**-24) * 2**127 on a value rounds to inf
FLOAT32_EDGES = [
    1.0,
    0.5,
    1e-30,
    1e30,
    9e-31,
    2e30,
    0.0,
    -0.0,
    -1.0,
    2**-149,
    2**-150,
    2**-150 * (1 + 2**-40),
    (2 - 2**-23) * 2**127,
    (2 - 2**-24) * 2**127,
    3.5e38,
    float("inf"),
    float("nan"),
    1,
    0,
    10**39,
]


@pytest.mark.parametrize("value", FLOAT32_EDGES, ids=repr)
def test_temperature_and_repetition_penalty_are_refused_where_ft_would_misread_them(value) -> None:
    # FT reads both as float32: temperature must stay above 0, the penalty it divides by also finite
    with np.errstate(over="ignore"):
        as_float32 = np.float32(value)
    for name, valid in (("temperature", as_float32 > 0), ("repetition_penalty", 0 < as_float32 < np.inf)):
        params = GenerationParams(**{name: value})
        if valid:
            params.check()
        else:
            with pytest.raises(InvalidRequestError, match=name):
                params.check()


# FT's types for these inputs (fastertransformer_backend all_models/gpt/fastertransformer/
# config.pbtxt): uint32, uint32, int32, uint64; max_new_tokens stays below 2**31 because FT adds
# the input length to it as an int. FT samples from at most 1024 tokens (TopKSamplingLayer.cu
# clips k) but sizes its workspace by the k it gets: a bigger top_k goes as 1024.
SENT = {"top_k": lambda k: min(k, 1024)}
INTEGER_OPTIONS = {
    "max_new_tokens": (protocol.REQUEST_OUTPUT_LEN, [1, 2**31 - 1], [0, 2**31, 2**32, 2**32 + 5, 10**30]),
    "top_k": (protocol.RUNTIME_TOP_K, [0, 64, 2**32 - 1], [-1, 2**32, 2**32 + 1, 10**30]),
    "min_new_tokens": (protocol.MIN_LENGTH, [0, 2**31 - 1], [-1, 2**31, 2**32]),
    "seed": (protocol.RANDOM_SEED, [0, 2**64 - 1], [-1, 2**64, 10**30]),
}


@pytest.mark.parametrize("name", INTEGER_OPTIONS)
def test_an_integer_option_is_sent_exactly_or_refused_never_wrapped(name: str) -> None:
    tensor, fits, wraps = INTEGER_OPTIONS[name]
    for value in fits:
        params = GenerationParams(**{name: value})
        params.check()
        arrays = ft_inputs([Row([1, 2])], params, ALL_INPUTS)
        assert int(arrays[tensor].item()) == SENT.get(name, int)(value), (name, value)
    for value in wraps:
        with pytest.raises(InvalidRequestError, match=name):
            GenerationParams(**{name: value}).check()


# values of another type, each of which numpy would have sent as another value: 2.5 tokens as 2,
# True as 1, "yes" as asking for log probabilities
WRONG_TYPES = {
    "max_new_tokens": [2.5, True, "12", None, np.float64(3.0)],
    "top_k": [1.5, False, "4"],
    "min_new_tokens": [1.5, True],
    "end_id": [2.0, True, "3"],
    "temperature": ["0.5", True, None, np.bool_(True)],
    "top_p": [None, "1", False],
    "repetition_penalty": ["1.1", True],
    "return_log_probs": ["yes", 1, None],
    "seed": [1.5, True, [1, True], "7"],
    "stop": [5, b"ab"],
    "bad_words": [3],
}
EMPTY_WORDS = {"stop": ["", [""], [[]], ["a", []]], "bad_words": [[""], [[]]]}


@pytest.mark.parametrize("name", WRONG_TYPES)
def test_an_option_of_another_type_is_refused_naming_it_not_sent_as_another_value(name: str) -> None:
    for value in WRONG_TYPES[name]:
        with pytest.raises(InvalidRequestError, match=f"^{name} (must|is) .*got {re.escape(repr(value))}"):
            GenerationParams.from_options({name: value})
    # numpy's numbers are numbers: what a caller computed with numpy goes as it is
    params = GenerationParams.from_options(
        {"max_new_tokens": np.int32(4), "temperature": np.float32(0.5), "return_log_probs": np.bool_(True)}
    )
    arrays = ft_inputs([Row([1, 2])], params, ALL_INPUTS)
    assert arrays[protocol.REQUEST_OUTPUT_LEN].tolist() == [[4]]
    assert arrays[protocol.TEMPERATURE].tolist() == [[0.5]]


@pytest.mark.parametrize("name", EMPTY_WORDS)
def test_an_empty_stop_or_bad_word_is_refused_as_the_openai_api_refuses_it(name: str) -> None:
    for value in EMPTY_WORDS[name]:
        with pytest.raises(InvalidRequestError, match=f"^{name} holds an empty (string|list of token ids)"):
            GenerationParams.from_options({name: value})


@pytest.mark.parametrize("task", [3, b"shout", ["taskA", 1]], ids=["an-id", "bytes", "an-id-in-a-list"])
def test_a_task_that_is_not_a_name_is_refused_saying_so(task) -> None:
    prompts = [[1], [2]] if isinstance(task, list) else [[1]]
    with pytest.raises(InvalidRequestError, match="a task is named by a string"):
        Plan.build(prompts, task, GenerationParams(), INFO, None)


def test_a_word_token_id_is_sent_exactly_or_refused_never_wrapped() -> None:
    # FT's stop_words_list and bad_words_list are INT32 (fastertransformer_backend config.pbtxt);
    # INFO publishes no vocab_size, so only the type bounds the ids
    for kind in ("stop", "bad_words"):
        plan = Plan.build([[1, 2]], None, GenerationParams(**{kind: [[2**31 - 1, 5]]}), INFO, None)
        name = protocol.STOP_WORDS_LIST if kind == "stop" else protocol.BAD_WORDS_LIST
        sent = plan.requests()[0].arrays[name]
        assert sent[0, 0, :2].tolist() == [2**31 - 1, 5]
        with pytest.raises(InvalidRequestError, match="2147483648"):
            Plan.build([[1, 2]], None, GenerationParams(**{kind: [[2**31, 5]]}), INFO, None)
