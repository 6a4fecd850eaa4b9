"""Build the FT backend's input tensors and read its outputs: numpy and tritonclient types only.

Tensor names and dtypes come from `ftprefix.protocol`'s table. Reading follows what real FT
returns (docs/design.md, "What FT returns"): row b's generated tokens start right after its own
input_lengths[b] tokens; the rest of the row is end_id. The padded width W that
`sequence_length` counts from is that of the batch FT ran, which Triton may have merged with
other requests, so a reader must not derive token positions from it: it takes at most the
requested number of tokens after the row's input, ends a row at its first end_id or completed
stop word, and uses `sequence_length` only as a cross-check. Rows asking for fewer tokens than
others in FT's batch get one extra token; trimming to the request hides it.
"""

from __future__ import annotations

import csv
import io
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import (
    deserialize_bytes_tensor,
    np_to_triton_dtype,
    serialize_byte_tensor,
    triton_to_np_dtype,
)

from ftprefix import protocol
from ftprefix.client.errors import MalformedResponseError
from ftprefix.client.types import GenerationParams
from ftprefix.ft_rows import RowAnswer, RowSpec, read_row
from ftprefix.words import batch_words_to_ft

_COLUMN = {t.name: t.column for t in protocol.FT_INPUTS}


@dataclass(frozen=True)
class Row:
    """One prompt of a batch, already tokenised, with its task id resolved."""

    input_ids: list[int]
    task_id: int | None = None
    stop_words: list[list[int]] = field(default_factory=list)
    bad_words: list[list[int]] = field(default_factory=list)
    seed: int | None = None  # its own random_seed, where the call gave one per prompt


def infer_inputs(arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    """tritonclient inputs from named numpy arrays (the aio client takes the same classes)."""
    inputs = []
    for name, array in arrays.items():
        item = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        item.set_data_from_numpy(array)
        inputs.append(item)
    return inputs


RECONNECT_EVERY_MS = 1000
# Triton's own client's channel settings (tritonclient.grpc: messages of any size, its keepalive),
# and a bounded wait between connection attempts
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_timeout_ms", 20000),
    ("grpc.keepalive_permit_without_calls", False),
    ("grpc.http2.max_pings_without_data", 2),
    # gRPC waits longer after each failed connection, up to 2 minutes: a Triton back after a long
    # outage (a restart, a GPU model loading) would go unseen that long; one attempt a second to
    # a server that refuses costs nothing
    ("grpc.max_reconnect_backoff_ms", RECONNECT_EVERY_MS),
]
# gRPC's name resolvers, for a target that names several servers ("dns:///triton-pods:8001", a
# Kubernetes headless Service; "ipv4:10.0.0.1:8001,10.0.0.2:8001")
_RESOLVER_SCHEMES = ("dns:", "ipv4:", "ipv6:")


def channel_options(url: str) -> list[tuple[str, int | str]]:
    """The channel settings for `url`. A target with a resolver scheme may name several servers:
    requests then go round robin over every address (gRPC's default, pick_first, sends them all
    over one connection, to one server). A plain host:port keeps pick_first: the first address of
    the host that answers, as every gRPC client does."""
    options = list(CHANNEL_OPTIONS)
    if url.startswith(_RESOLVER_SCHEMES):
        options.append(("grpc.lb_policy_name", "round_robin"))
    if is_loopback(url):
        # gRPC sends every call through the proxy that http_proxy / https_proxy name unless
        # no_proxy lists the host, loopback included; the proxy, another machine or no server at
        # all, cannot reach this one's loopback. Go's net/http never proxies loopback (its
        # httpproxy package): the same rule here, and a remote server still goes where the
        # environment says
        options.append(("grpc.enable_http_proxy", 0))
    return options


def is_loopback(url: str) -> bool:
    """Whether every server a gRPC target names is on this machine's loopback (localhost,
    127.0.0.0/8, ::1), whatever the form: host:port, [v6]:port, dns:///host:port, ipv4:a:p,b:p."""
    if url.startswith(("ipv4:", "ipv6:")):
        return all(_loopback_host(address) for address in url.partition(":")[2].split(","))
    return _loopback_host(url.rpartition("/")[2] if url.startswith("dns:") else url)


def _loopback_host(address: str) -> bool:
    if address.startswith("["):  # [v6] or [v6]:port
        host = address[1:].partition("]")[0]
    elif address.count(":") > 1:  # a bare v6 address (an ipv6: target's addresses may lack brackets)
        host = address
    else:
        host = address.partition(":")[0]
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_DATATYPES: dict[np.dtype, str] = {}  # numpy dtype -> Triton's name, as np_to_triton_dtype says


def triton_datatype(dtype: np.dtype) -> str:
    """Triton's name of a numpy dtype (np_to_triton_dtype, looked up once per dtype)."""
    name = _DATATYPES.get(dtype)
    if name is None:
        name = _DATATYPES[dtype] = np_to_triton_dtype(dtype)
    return name


def tensor_bytes(array: np.ndarray, datatype: str) -> bytes:
    """A tensor's contents as Triton takes them, over gRPC and HTTP alike: raw little-endian, BYTES
    with a 4-byte length before each element."""
    if datatype == "BYTES":
        serialized = serialize_byte_tensor(array)
        return serialized.item() if serialized.size else b""
    return np.ascontiguousarray(array).tobytes()


def tensor_from_bytes(raw: bytes, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """`tensor_bytes` read back: an output's contents as a numpy array of its shape."""
    if datatype == "BYTES":
        return deserialize_bytes_tensor(raw).reshape(shape)
    return np.frombuffer(raw, dtype=triton_to_np_dtype(datatype)).reshape(shape)


def infer_request(
    model: str, arrays: dict[str, np.ndarray], outputs: Sequence[str], parameters: dict[str, str] | None
) -> service_pb2.ModelInferRequest:
    """Triton's ModelInferRequest for named numpy arrays, built in one pass (what tritonclient's
    InferInput objects amount to, without them): raw little-endian contents, BYTES serialised as
    Triton expects (a 4-byte length before each element)."""
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, array in arrays.items():
        datatype = triton_datatype(array.dtype)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(tensor_bytes(array, datatype))
    for name in outputs:
        request.outputs.add(name=name)
    for key, value in (parameters or {}).items():
        request.parameters[key].string_param = value
    return request


def response_arrays(response: service_pb2.ModelInferResponse, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named outputs of a response as numpy arrays, in one pass over it. Missing ones are left out."""
    raw = response.raw_output_contents
    arrays = {}
    for index, output in enumerate(response.outputs):
        if output.name in names and index < len(raw):
            arrays[output.name] = tensor_from_bytes(raw[index], output.datatype, tuple(output.shape))
    return arrays


def output_arrays(result: grpcclient.InferResult, names: Sequence[str]) -> dict[str, np.ndarray]:
    """`response_arrays` of a tritonclient result (the sync client)."""
    return response_arrays(result.get_response(), names)


def sampling_inputs(
    batch: int, params: GenerationParams, end_id: int | None, rows: Sequence[Row] = ()
) -> dict[str, np.ndarray]:
    """The optional per-row inputs for `params` (callers drop those the model does not declare);
    `rows` with seeds of their own: random_seed row by row (FT takes one per row, as it does for
    the rows of requests Triton batched together: BaseSamplingLayer.cc in NVIDIA/FasterTransformer)."""
    seed = params.seed if isinstance(params.seed, int) else None
    values: dict[str, float | int | None] = {
        protocol.RUNTIME_TOP_K: min(params.top_k, protocol.TOP_K_MAX),
        protocol.RUNTIME_TOP_P: params.top_p,
        protocol.TEMPERATURE: params.temperature,
        protocol.REPETITION_PENALTY: params.repetition_penalty,
        protocol.RANDOM_SEED: seed,
        protocol.END_ID: end_id,
        protocol.IS_RETURN_LOG_PROBS: True if params.return_log_probs else None,
        # always sent, 0 when unused: requests Triton batches together carry the same inputs
        protocol.MIN_LENGTH: params.min_new_tokens,
    }
    arrays = {name: _COLUMN[name]([value] * batch) for name, value in values.items() if value is not None}
    if seed is None:
        seeds = [row.seed for row in rows]
        if len(seeds) != batch or None in seeds:
            raise ValueError("seeds per prompt need every row's seed")
        arrays[protocol.RANDOM_SEED] = _COLUMN[protocol.RANDOM_SEED](seeds)
    return arrays


def task_ids_input(task_ids: Sequence[int | None]) -> dict[str, np.ndarray]:
    """prompt_learning_task_name_ids, or nothing for a batch of base-model rows.

    FT has no id meaning "no prefix", so callers must not mix base rows and task rows in one request.
    """
    if all(i is None for i in task_ids):
        return {}
    if any(i is None for i in task_ids):
        raise ValueError("rows with and without a task cannot share one FT request")
    return {protocol.TASK_IDS: _COLUMN[protocol.TASK_IDS](task_ids)}


def _declared(arrays: dict[str, np.ndarray], declared: frozenset[str]) -> dict[str, np.ndarray]:
    return {name: array for name, array in arrays.items() if name in declared}


def ft_inputs(
    rows: Sequence[Row],
    params: GenerationParams,
    declared: frozenset[str],
    end_id: int | None = None,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """Every input tensor of one request to the `fastertransformer` model.

    Rows are right-padded to the longest (FT reads only the first input_lengths[b] ids of row b).
    """
    lengths = [len(row.input_ids) for row in rows]
    input_ids = np.full((len(rows), max(lengths)), pad_id, dtype=protocol.FT_INPUT[protocol.INPUT_IDS].dtype)
    for b, row in enumerate(rows):
        input_ids[b, : len(row.input_ids)] = row.input_ids
    arrays = {
        protocol.INPUT_IDS: input_ids,
        protocol.INPUT_LENGTHS: _COLUMN[protocol.INPUT_LENGTHS](lengths),
        protocol.REQUEST_OUTPUT_LEN: _COLUMN[protocol.REQUEST_OUTPUT_LEN](
            [params.max_new_tokens] * len(rows)
        ),
        **sampling_inputs(len(rows), params, end_id, rows),
        **task_ids_input([row.task_id for row in rows]),
    }
    if any(row.stop_words for row in rows):
        arrays[protocol.STOP_WORDS_LIST] = batch_words_to_ft([row.stop_words for row in rows])
    if any(row.bad_words for row in rows):
        arrays[protocol.BAD_WORDS_LIST] = batch_words_to_ft([row.bad_words for row in rows])
    return _declared(arrays, declared)


def csv_words(words: Sequence[str]) -> bytes:
    """Stop/bad words for the ensemble's preprocessing: one CSV line per row, as FT's word_list.py reads."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(words)
    return buffer.getvalue().encode("utf-8")


def ensemble_inputs(
    prompts: Sequence[str],
    rows: Sequence[Row],
    stops: Sequence[str],
    bad_words: Sequence[str],
    params: GenerationParams,
    declared: frozenset[str],
) -> dict[str, np.ndarray]:
    """Every input tensor of one request to the text-in/text-out `ensemble` model (`rows`: each
    prompt's task id and seed; their ids are the ensemble's to find)."""
    batch = len(prompts)
    arrays = {
        protocol.TEXT_INPUT: np.array([[p.encode("utf-8")] for p in prompts], dtype=object),
        protocol.TEXT_OUTPUT_LEN: _COLUMN[protocol.REQUEST_OUTPUT_LEN]([params.max_new_tokens] * batch),
        protocol.TEXT_BAD_WORDS: np.array([[csv_words(bad_words)]] * batch, dtype=object),
        protocol.TEXT_STOP_WORDS: np.array([[csv_words(stops)]] * batch, dtype=object),
        **sampling_inputs(batch, params, params.end_id, rows),
        **task_ids_input([row.task_id for row in rows]),
    }
    return _declared(arrays, declared)


def ensemble_texts(output: np.ndarray, batch: int) -> list[str]:
    """OUTPUT_0 [batch, beam] (beam 0): the generated text of each row."""
    rows = np.asarray(output).reshape(batch, -1)[:, 0]
    return [
        value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value) for value in rows
    ]


# -- reading FT's output tensors ---------------------------------------------------------------


def read_rows(
    output_ids: np.ndarray, sequence_length: np.ndarray, specs: Sequence[RowSpec], final: bool
) -> list[RowAnswer]:
    """Every row of one response (beam 0), cross-checked against `sequence_length`."""
    ids = np.asarray(output_ids)
    if ids.ndim == 2:  # a server that drops the beam axis
        ids = ids[:, None, :]
    rows = ids.shape[0]
    if rows != len(specs):
        raise MalformedResponseError(f"the server answered {rows} rows for {len(specs)} prompts")
    lengths: list[int] = np.asarray(sequence_length).reshape(rows, -1)[:, 0].tolist()
    answers = [read_row(ids[b, 0], spec, final) for b, spec in enumerate(specs)]
    _cross_check(answers, lengths, specs, ids.shape[-1], final)
    return answers


def _cross_check(
    answers: Sequence[RowAnswer], lengths: list[int], specs: Sequence[RowSpec], total: int, final: bool
) -> None:
    """The rows must agree on one padded width W: sequence_length[b] = W + generated tokens of row b,
    W covers every input and leaves room for every requested length in the row width `total`."""
    low, high = 0, total
    for spec in specs:
        low, high = max(low, spec.input_length), min(high, total - spec.max_new_tokens)
    for b, (answer, length) in enumerate(zip(answers, lengths, strict=True)):
        if final and answer.finish_reason is None:
            _malformed(b, "it neither reaches the requested length nor ends with end_id or a stop word")
        # FT generates exactly the tokens read for a row that stopped early, and one more than
        # read for a row given k + 1 tokens (or whose end_id fill follows in a streamed response)
        width = length - len(answer.tokens)
        exact = answer.finish_reason == "end_id" or answer.finish_reason == "stop_words"
        low, high = max(low, width if exact else width - 1), min(high, width)
        if low > high:
            _malformed(b, f"its sequence_length {length} fits no padded width shared with the other rows")


def _malformed(row: int, problem: str) -> None:
    raise MalformedResponseError(
        f"row {row} of the server's answer does not follow FasterTransformer's output layout: {problem}; "
        "is this the FT backend or ftprefix serve?"
    )
