"""A model with rinna's kind of tokenizer (spiece.model, T5Tokenizer) served by `ftprefix serve
--tokenizer --openai-port`, as a user runs it: every text path gives the ids Hugging Face's slow
tokenizer recorded, and the text they decode to.

The reference for each answer is the `fastertransformer` model itself, sent the recorded ids raw
(as a GPU client sends them), read as FT's output layout says, and decoded by the tests' own
reference decoder (held to the recorded answers in test_tokenizers.py): the client's text, the
ensemble's text and the OpenAI completion text must all equal it, for every task and the base
model, streamed and not.
"""

from __future__ import annotations

import asyncio
import re

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from sentencepiece_reference import RINNA, RinnaReference, golden_rows, recorded_continuations
from serving_support import convert_toy, start_serve_cli, stop_serve_cli, tensors
from tritonclient.utils import InferenceServerException

from ftprefix import protocol
from ftprefix.client import AsyncClient, Client

TASKS = {"alpha": 3, "beta": 5}
MAX_TOKENS = 10
REFERENCE = RinnaReference()
ROWS = golden_rows(RINNA)
# short and long prompts, a <NL>, special-token strings inside the text, characters the model does
# not know, ASCII
PROMPTS = [ROWS[i] for i in (2, 8, 9, 11, 12, 13)]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    converted = convert_toy(
        tmp_path_factory.mktemp("spm"), TASKS, "japanese-toy", tokenizer_from=RINNA, seed=21
    )
    return {**converted, "base": converted["hf"].name}


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "streaming"])
def served(request, model):
    # one engine instance: the tokenizer is the subject
    extra = ["--instances", "1", "--tokenizer", str(model["hf"]), "--openai-port", "0"]
    proc, grpc_url, text = start_serve_cli(model["ft"], *extra, *(["--streaming"] if request.param else []))
    try:
        api = re.search(r"OpenAI-compatible API on (\S+)", text)
        assert api and "spiece.model, T5Tokenizer" in text, text
        yield {"grpc": grpc_url, "api": api.group(1), "streaming": request.param}
    finally:
        stop_serve_cli(proc)


def _raw(grpc_url: str, ids: list[int], task_id: int | None, streaming: bool) -> list[int]:
    """The recorded ids sent straight to `fastertransformer`; FT's generated tokens of the row."""
    arrays = {
        protocol.INPUT_IDS: np.array([ids], dtype=np.uint32),
        protocol.INPUT_LENGTHS: np.array([[len(ids)]], dtype=np.uint32),
        protocol.REQUEST_OUTPUT_LEN: np.array([[MAX_TOKENS]], dtype=np.uint32),
    }
    if task_id is not None:
        arrays[protocol.TASK_IDS] = np.array([[task_id]], dtype=np.uint32)
    if streaming:
        responses: list = []
        with grpcclient.InferenceServerClient(grpc_url) as client:
            client.start_stream(callback=lambda result, error: responses.append((result, error)))
            client.async_stream_infer(protocol.FT_MODEL, tensors(arrays), enable_empty_final_response=True)
            client.stop_stream()  # waits for the outstanding responses
        finals = [r for r, e in responses if e is None and r.as_numpy(protocol.OUTPUT_IDS) is not None]
        output = finals[-1].as_numpy(protocol.OUTPUT_IDS)
    else:
        with grpcclient.InferenceServerClient(grpc_url) as client:
            output = client.infer(protocol.FT_MODEL, tensors(arrays)).as_numpy(protocol.OUTPUT_IDS)
    row = [int(t) for t in output[0, 0, len(ids) : len(ids) + MAX_TOKENS]]
    return row[: row.index(REFERENCE.eos_id) + 1] if REFERENCE.eos_id in row else row


@pytest.fixture(scope="module")
def expected(served) -> dict:
    """(prompt text, task) -> (generated ids, their text), from the raw model and the reference."""
    answers = {}
    for task_id, task in enumerate([None, *TASKS]):
        for row in PROMPTS:
            ids = row["ids"]
            tokens = _raw(served["grpc"], ids, None if task is None else task_id - 1, served["streaming"])
            answers[(row["text"], task)] = (tokens, REFERENCE.continuation(ids, tokens))
    texts = {answers[(PROMPTS[0]["text"], t)][1] for t in [None, *TASKS]}
    assert len(texts) == len(TASKS) + 1, "the tasks should answer differently"
    return answers


def test_the_client_sends_the_recorded_ids_and_shows_the_models_text(served, model, expected) -> None:
    with Client(served["grpc"], tokenizer=model["hf"]) as client:
        for (text, task), (tokens, want) in expected.items():
            done = client.generate(text, task=task, max_new_tokens=MAX_TOKENS)
            assert (done.token_ids, done.text) == (tokens, want), (text, task)
            assert done.prompt_token_count == len(next(r["ids"] for r in PROMPTS if r["text"] == text))
            if served["streaming"]:
                chunks = list(client.stream(text, task=task, max_new_tokens=MAX_TOKENS))
                assert [t for c in chunks for t in c.token_ids] == tokens
                assert "".join(c.text or "" for c in chunks) == want, (text, task)


PLAIN = pytest.mark.parametrize("served", [False], indirect=True, ids=["plain"])
STREAMING = pytest.mark.parametrize("served", [True], indirect=True, ids=["streaming"])


@PLAIN
def test_the_ensemble_gives_the_same_text(served, expected) -> None:
    with Client(served["grpc"]) as client:
        for (text, task), (_tokens, want) in expected.items():
            assert client.generate(text, task=task, max_new_tokens=MAX_TOKENS).text == want, (text, task)


def test_the_openai_api_gives_the_same_text_and_counts_the_recorded_ids(served, model, expected) -> None:
    api = openai.OpenAI(base_url=served["api"], api_key="unused", max_retries=0)
    for (text, task), (tokens, want) in expected.items():
        prompt_ids = next(r["ids"] for r in PROMPTS if r["text"] == text)
        done = api.completions.create(
            model=task or model["base"], prompt=text, max_tokens=MAX_TOKENS, temperature=0
        )
        assert done.choices[0].text == want, (text, task)
        assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (len(prompt_ids), len(tokens))
        chunks = list(
            api.completions.create(
                model=task or model["base"],
                prompt=text,
                max_tokens=MAX_TOKENS,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert "".join(c.text for chunk in chunks for c in chunk.choices) == want, (text, task)
        assert chunks[-1].usage.prompt_tokens == len(prompt_ids)


@STREAMING
def test_the_async_client_streams_whole_characters(served, model, expected) -> None:
    async def stream_all() -> dict:
        texts = {}
        async with AsyncClient(served["grpc"], tokenizer=model["hf"]) as client:
            for text, task in expected:
                pieces = [c.text async for c in client.stream(text, task=task, max_new_tokens=MAX_TOKENS)]
                assert all("\ufffd" not in (p or "") for p in pieces)
                texts[(text, task)] = "".join(p or "" for p in pieces)
        return texts

    assert asyncio.run(stream_all()) == {key: want for key, (_tokens, want) in expected.items()}


# -- the ensemble's own text models, with every recorded answer ------------------------------------


@PLAIN
def test_preprocessing_encodes_every_recorded_text(served) -> None:
    rows = [r for r in ROWS if r["ids"]]
    arrays = {
        "QUERY": np.array([[r["text"].encode("utf-8")] for r in rows], dtype=object),
        "REQUEST_OUTPUT_LEN": np.full((len(rows), 1), 4, dtype=np.uint32),
        "BAD_WORDS_DICT": np.array([[b""]] * len(rows), dtype=object),
        "STOP_WORDS_DICT": np.array([[b""]] * len(rows), dtype=object),
    }
    with grpcclient.InferenceServerClient(served["grpc"]) as client:
        result = client.infer("preprocessing", tensors(arrays))
        ids, lengths = result.as_numpy("INPUT_ID"), result.as_numpy("REQUEST_INPUT_LEN")
        for b, row in enumerate(rows):
            assert ids[b, : int(lengths[b, 0])].tolist() == row["ids"], row["text"]
        empty = {**arrays, **{k: v[:1] for k, v in arrays.items()}, "QUERY": np.array([[b" "]], dtype=object)}
        with pytest.raises(InferenceServerException, match="no tokens"):
            client.infer("preprocessing", tensors(empty))
    assert len(rows) == len(ROWS) - 2  # "" and " " encode to nothing


def _postprocess(grpc_url: str, rows: list[tuple[list[int], list[int]]]) -> list[str]:
    """(prompt ids, generated ids) rows laid out as FT returns them -> the postprocessing model's text."""
    width = max(len(p) + len(g) for p, g in rows) + 1
    batch = np.full((len(rows), 1, width), REFERENCE.eos_id, dtype=np.uint32)
    for b, (prompt, generated) in enumerate(rows):
        batch[b, 0, : len(prompt) + len(generated)] = [*prompt, *generated]
    arrays = {
        "TOKENS_BATCH": batch,
        "REQUEST_INPUT_LEN": np.array([[len(p)] for p, _ in rows], dtype=np.uint32),
        "REQUEST_OUTPUT_LEN": np.array([[max(1, len(g))] for _, g in rows], dtype=np.uint32),
    }
    with grpcclient.InferenceServerClient(grpc_url) as client:
        output = client.infer("postprocessing", tensors(arrays)).as_numpy("OUTPUT")
    return [value.decode("utf-8") for value in output[:, 0]]


@PLAIN
def test_postprocessing_decodes_every_recorded_answer(served) -> None:
    eos = REFERENCE.eos_id
    # each recorded encoding as generated text after an empty prompt: FT's reading ends a row at
    # its first end token, so ids past one are not the row's (the reference decodes the same cut)
    cut = [r["ids"][: r["ids"].index(eos) + 1] if eos in r["ids"] else r["ids"] for r in ROWS]
    rows = [([], ids) for ids in cut if ids]
    want = [
        row["decode_skip_special"] if ids == row["ids"] else REFERENCE.decode(ids)
        for row, ids in zip(ROWS, cut, strict=True)
        if ids
    ]
    assert sum(ids == row["ids"] for row, ids in zip(ROWS, cut, strict=True) if ids) >= 70
    assert _postprocess(served["grpc"], rows) == want
    continuations = [c for c in recorded_continuations(RINNA) if eos not in c["generated_ids"]]
    texts = _postprocess(served["grpc"], [(c["prompt_ids"], c["generated_ids"]) for c in continuations])
    assert texts == [c["decode_all"][len(c["decode_prompt"]) :] for c in continuations]


# -- rinna's newline convention through every text path ---------------------------------------------


@pytest.fixture(scope="module")
def newline_served(model):
    extra = ["--instances", "1", "--tokenizer", str(model["hf"]), "--openai-port", "0"]
    extra += ["--newline-token", "<NL>"]
    proc, grpc_url, text = start_serve_cli(model["ft"], *extra)
    try:
        api = re.search(r"OpenAI-compatible API on (\S+)", text)
        assert api and "newline token '<NL>'" in text, text
        yield {"grpc": grpc_url, "api": api.group(1)}
    finally:
        stop_serve_cli(proc)


def test_newlines_are_sent_as_the_newline_token_and_come_back_as_newlines(newline_served, model) -> None:
    row = next(r for r in ROWS if "<NL>" in r["text"])
    prompt = row["text"].replace("<NL>", "\n")
    nl = REFERENCE.sp.piece_to_id("<NL>")
    answers = set()
    for task_id, task in enumerate([None, *TASKS]):
        tokens = _raw(newline_served["grpc"], row["ids"], None if task is None else task_id - 1, False)
        want = REFERENCE.continuation(row["ids"], tokens).replace("<NL>", "\n")
        with Client(newline_served["grpc"], tokenizer=model["hf"], newline_token="<NL>") as client:
            done = client.generate(prompt, task=task, max_new_tokens=MAX_TOKENS)
            assert (done.text, done.prompt_token_count) == (want, len(row["ids"]))
            # a newline as a stop word is the newline token, as the model generates it mid-sentence
            stopped = client.generate(prompt, task=task, max_new_tokens=MAX_TOKENS, stop=["\n"])
            cut = tokens[: tokens.index(nl) + 1] if nl in tokens else tokens
            assert stopped.token_ids == cut and "\n" not in (stopped.text or "")
        with Client(newline_served["grpc"]) as ensemble:
            assert ensemble.generate(prompt, task=task, max_new_tokens=MAX_TOKENS).text == want
        api = openai.OpenAI(base_url=newline_served["api"], api_key="unused", max_retries=0)
        done = api.completions.create(
            model=task or model["base"], prompt=prompt, max_tokens=MAX_TOKENS, temperature=0
        )
        assert (done.choices[0].text, done.usage.prompt_tokens) == (want, len(row["ids"]))
        answers.add(want)
    assert len(answers) == len(TASKS) + 1
