"""FasterTransformer's decoding controls on the reference engine: stop/bad words, end_id,
sampling, penalties, log probs, streaming, validation and hot reload."""

from __future__ import annotations

import numpy as np
import pytest
from test_engine import TASKS, Built, build, hf_greedy, hf_logits

from ftprefix.engine import Engine, GenerationRequest
from ftprefix.words import batch_words_to_ft, words_from_ft, words_to_ft

PROMPT = [5, 17, 42, 99, 7]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    return build(tmp_path_factory.mktemp("ft"), 1, True, 0.25)


@pytest.fixture(scope="module")
def engine(built: Built) -> Engine:
    return Engine.load(built.directory, gelu="erf")


def greedy(engine: Engine, n: int = 10, **kw) -> list[int]:
    return engine.generate([GenerationRequest(PROMPT, n, task_id=1, end_id=-1, **kw)])[0].generated_ids


def test_words_list_layout_is_fts() -> None:
    arr = words_to_ft([[4, 5], [9], [1, 2, 3]])
    assert arr.tolist() == [[4, 5, 9, 1, 2, 3], [2, 3, 6, -1, -1, -1]]
    assert words_from_ft(arr) == [[4, 5], [9], [1, 2, 3]]
    batch = batch_words_to_ft([[[7]], [[1, 2], [3]]])
    assert batch.shape == (2, 2, 3)
    assert batch[0].tolist() == [[7, 0, 0], [1, -1, -1]]


def test_end_id_stops_the_row_and_is_kept(built: Built, engine: Engine) -> None:
    reference = hf_greedy(built, PROMPT, 1, 10)
    end = reference[3]
    cut = reference.index(end)  # first occurrence
    other = [300, 2]
    results = engine.generate(
        [
            GenerationRequest(PROMPT, 10, task_id=1, end_id=end),
            GenerationRequest(other, 10, task_id=None, end_id=-1),
        ]
    )
    assert results[0].generated_ids == reference[: cut + 1]
    assert results[0].finish_reason == "end_id"
    assert results[1].generated_ids == hf_greedy(built, other, None, 10)  # the other row runs on


def test_stop_words_and_per_row_output_lengths(built: Built, engine: Engine) -> None:
    reference = hf_greedy(built, PROMPT, 1, 10)
    stop = reference[4:6]
    results = engine.generate(
        [
            GenerationRequest(PROMPT, 10, task_id=1, end_id=-1, stop_words=[[1, 1, 1], stop]),
            GenerationRequest(PROMPT, 3, task_id=1, end_id=-1),
        ]
    )
    first_match = next(i for i in range(1, 10) if reference[i - 1 : i + 1] == stop)
    assert results[0].generated_ids == reference[: first_match + 1]
    assert results[0].finish_reason == "stop_words"
    assert results[1].generated_ids == reference[:3]
    assert results[1].finish_reason == "length"


def test_bad_words_are_never_generated(built: Built, engine: Engine) -> None:
    reference = hf_greedy(built, PROMPT, 1, 10)
    banned = reference[0]
    out = greedy(engine, bad_words=[[banned]])
    assert banned not in out
    logits = hf_logits(built, PROMPT, 1)[-1]
    assert out[0] == int(np.argsort(logits)[-2])  # the runner-up takes its place


def test_repetition_penalty_follows_ft_formula(built: Built, engine: Engine) -> None:
    penalty = 3.0
    logits = hf_logits(built, PROMPT, 1)[-1].copy()
    seen = sorted(set(PROMPT))
    logits[seen] = np.where(logits[seen] < 0, logits[seen] * penalty, logits[seen] / penalty)
    out = greedy(engine, 1, repetition_penalty=penalty)
    assert out[0] == int(logits.argmax())
    # with a strong penalty greedy decoding avoids repeating what it has seen
    long = greedy(engine, 12, repetition_penalty=50.0)
    assert len(set(long)) == len(long)


def test_sampling_is_reproducible_and_respects_top_k(engine: Engine) -> None:
    def sample(seed: int) -> list[int]:
        return greedy(engine, 12, top_k=3, temperature=1.5, random_seed=seed)

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    request = GenerationRequest(PROMPT, 12, task_id=1, end_id=-1, top_k=3, temperature=1.5, random_seed=7)
    tokens = engine.generate([request])[0].generated_ids
    for logits, token in zip(engine.decode_logits([request])[0], tokens, strict=True):
        assert token in np.argsort(logits)[-3:]
    # a tiny nucleus is greedy; top_k=1 is greedy
    assert greedy(engine, top_p=1e-6, random_seed=3) == greedy(engine)
    assert greedy(engine, top_k=1, random_seed=3) == greedy(engine)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


@pytest.mark.parametrize("top_k", [200, 5000])
def test_top_k_above_64_samples_among_the_k_best_as_ft_does(engine: Engine, top_k: int) -> None:
    # FT df4a753 clips k to 1024 (TopKSamplingLayer.cu: setup_topk_runtime_args<1024>), not to the
    # 64 its kernel's comment names; a top-k row's output_log_probs is log P(token) - log P(k best),
    # so the set it sampled from shows in them. The toy vocabulary (512) is smaller than 1024.
    request = GenerationRequest(
        PROMPT, 6, task_id=1, end_id=-1, top_k=top_k, random_seed=5, return_log_probs=True
    )
    result = engine.generate([request])[0]
    expected = []
    for logits, token in zip(engine.decode_logits([request])[0], result.generated_ids, strict=True):
        log_probs = _log_softmax(logits)
        best = np.sort(log_probs)[::-1][: min(top_k, 1024)]
        expected.append(log_probs[token] - np.log(np.exp(best).sum()))
    np.testing.assert_allclose(result.output_log_probs, expected, atol=1e-4)


def test_log_probs_are_fts(engine: Engine) -> None:
    request = GenerationRequest(PROMPT, 6, task_id=1, end_id=-1, return_log_probs=True)
    result = engine.generate([request])[0]
    step_logits = engine.decode_logits([request])[0]
    expected = [_log_softmax(lg)[t] for lg, t in zip(step_logits, result.generated_ids, strict=True)]
    assert result.cum_log_prob == pytest.approx(sum(expected), abs=1e-4)
    assert result.output_log_probs == [0.0] * 6  # greedy is top-1 sampling: log P(token | top-1) = 0
    topp = GenerationRequest(PROMPT, 6, task_id=1, end_id=-1, top_p=0.9, random_seed=4, return_log_probs=True)
    result = engine.generate([topp])[0]
    step_logits = engine.decode_logits([topp])[0]
    expected = [_log_softmax(lg)[t] for lg, t in zip(step_logits, result.generated_ids, strict=True)]
    np.testing.assert_allclose(result.output_log_probs, expected, atol=1e-4)


def test_stream_yields_each_step_and_empty_lists_for_finished_rows(engine: Engine) -> None:
    requests = [GenerationRequest(PROMPT, 5, task_id=1, end_id=-1), GenerationRequest([3, 4], 2, end_id=-1)]
    steps = list(engine.stream(requests))
    assert len(steps) == 5
    generated = engine.generate(requests)
    assert [s.new_tokens[1] for s in steps] == [[t] for t in generated[1].generated_ids] + [[]] * 3
    assert [t for s in steps for t in s.new_tokens[0]] == generated[0].generated_ids
    assert [s.finished for s in steps] == [
        [False, False],
        [False, True],
        [False, True],
        [False, True],
        [True, True],
    ]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (GenerationRequest([1, 2], 4, task_id=len(TASKS)), "unknown task id 3"),
        (GenerationRequest([], 4), "empty input_ids"),
        (GenerationRequest([1, 2], 5000), "exceeds the limit"),
        (GenerationRequest([1, 10**6], 4), "outside the vocabulary"),
        (GenerationRequest([1, 2], 4, top_p=1.5), "top_p"),
    ],
)
def test_bad_requests_raise_clear_value_errors(
    engine: Engine, request_: GenerationRequest, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        engine.generate([request_])
