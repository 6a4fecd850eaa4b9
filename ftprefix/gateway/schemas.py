"""The OpenAI completions and chat requests as the gateway takes them: strictly.

Types are strict (no bool for a number, no string or fraction for an integer; 3.0 is JSON Schema's
integer 3), every field is known (an unknown one is a 400 naming it, as OpenAI answers), text must
be valid Unicode, and the constraints are in the schema `/openapi.json` publishes. Fields OpenAI
defines that FT cannot honour are taken at their neutral values and refused otherwise, naming the
parameter.

vLLM's extensions that clients and benchmarks send (vllm-project/vllm
`vllm/entrypoints/openai/protocol.py`, its "extra sampling parameters") are honoured: `top_k`,
`min_tokens` (FT's `min_length`), `ignore_eos` (min_tokens = max_tokens: FT cannot go on past an
end token, so the end token is not generated before the limit), `repetition_penalty`,
`stop_token_ids`, `bad_words`, `stream_options.continuous_usage_stats`; `min_p`,
`length_penalty`, `use_beam_search`, `include_stop_str_in_output`, `skip_special_tokens`,
`spaces_between_special_tokens`, `truncate_prompt_tokens` and `prompt_logprobs` at their neutral
values.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
)
from pydantic_core import PydanticCustomError

from ftprefix.gateway.errors import ApiError, bad_param

MAX_STOP = 4  # as OpenAI
# a temperature this small is greedy decoding (vLLM's _SAMPLING_EPS): FT divides logits by it in
# float32, where smaller ones vanish or overflow
GREEDY_BELOW = 1e-5
MAX_SEED = 2**63
MAX_N = 128  # choices per prompt, as OpenAI caps n


def _integral(value: Any) -> Any:
    """JSON Schema's integer is any number without a fractional part (2020-12 validation,
    "integer"), so 5.0 is the 5 that `/openapi.json`'s "type": "integer" promises to take, and
    schemathesis sends such numbers; 5.5, "5" and true go on to the strict check, which refuses them."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def _integral_ids(value: Any, handler: Any) -> Any:
    """A prompt's token ids, read as `_integral` reads one integer: tried as sent first, so that a
    long prompt of plain integers costs no Python call per id."""
    try:
        return handler(value)
    except ValidationError:
        if not isinstance(value, list) or not any(
            type(x) is float or (type(x) is list and any(type(y) is float for y in x)) for x in value
        ):
            raise
    return handler([[_integral(y) for y in x] if type(x) is list else _integral(x) for x in value])


INTEGRAL = BeforeValidator(_integral)  # after the constraints, which then stay in the schema
TOKEN_ID = Annotated[int, Field(ge=0, lt=2**32)]
NonEmptyText = Annotated[str, Field(min_length=1)]
NO_ALTERNATIVES = (
    "FasterTransformer returns the chosen tokens' log probabilities only, no alternatives: ask for {ask}"
)


def only(*values: Any) -> Any:
    """A field served at these values only: the schema says so, while any other value of its type
    is refused with a 400 that names the parameter (`_refuse`), friendlier than a schema error."""
    return Field(json_schema_extra={"enum": list(values)})


# a field taken only as null, or left out: any other value gets the 400 of `only`
NULL_ONLY = Annotated[Any, only(None)]


class _Strict(BaseModel):
    # NaN and Infinity are not JSON (RFC 8259), though Python's parsers take them: refused as
    # such, not as a number out of its range
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None
    # OpenAI pads its chunks with random text against length side channels unless told false;
    # chunks here carry no padding either way
    include_obfuscation: bool | None = None


class _Sampling(_Strict):
    """What completions and chat share: OpenAI's sampling fields and vLLM's extensions."""

    model: NonEmptyText
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N), INTEGRAL] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: (
        Annotated[str, Field(min_length=1)] | Annotated[list[NonEmptyText], Field(max_length=MAX_STOP)] | None
    ) = None
    seed: Annotated[int, Field(ge=0, lt=MAX_SEED), INTEGRAL] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2), only(0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2), only(0)] | None = None
    logit_bias: Annotated[dict[str, float], Field(json_schema_extra={"maxProperties": 0})] | None = None
    user: str | None = None
    # vLLM's extensions
    top_k: Annotated[int, Field(ge=-1, lt=2**32), INTEGRAL] | None = None
    min_tokens: Annotated[int, Field(ge=0), INTEGRAL] | None = None
    ignore_eos: bool | None = None
    # FT divides positive logits by it in float32: bounded so that neither it nor the result overflows
    repetition_penalty: Annotated[float, Field(ge=0.01, le=100)] | None = None
    stop_token_ids: list[Annotated[TOKEN_ID, INTEGRAL]] | None = None
    bad_words: list[NonEmptyText] | None = None
    min_p: Annotated[float, Field(ge=0, le=1), only(0)] | None = None
    length_penalty: Annotated[float, only(1)] | None = None
    use_beam_search: Annotated[bool, only(False)] | None = None
    include_stop_str_in_output: Annotated[bool, only(False)] | None = None
    skip_special_tokens: Annotated[bool, only(True)] | None = None
    spaces_between_special_tokens: Annotated[bool, only(True)] | None = None
    truncate_prompt_tokens: NULL_ONLY = None  # taken only when null: the gateway never truncates
    prompt_logprobs: NULL_ONLY = None

    @property
    def choices(self) -> int:
        """Choices per prompt (`n`): each a row of its own at Triton."""
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """vLLM's `continuous_usage_stats`: the usage so far on every chunk, with `include_usage`
        only, as vLLM reads it (`should_include_usage`, vllm/entrypoints/openai)."""
        return bool(self.include_usage and self.stream_options.continuous_usage_stats)  # type: ignore[union-attr]

    def _refuse(self, unsupported: Sequence[tuple[str, Any, tuple[Any, ...]]]) -> None:
        for param, value, neutral in (
            ("presence_penalty", self.presence_penalty, (None, 0)),
            ("frequency_penalty", self.frequency_penalty, (None, 0)),
            ("logit_bias", self.logit_bias, (None, {})),
            ("min_p", self.min_p, (None, 0)),
            ("length_penalty", self.length_penalty, (None, 1)),
            ("use_beam_search", self.use_beam_search, (None, False)),
            ("include_stop_str_in_output", self.include_stop_str_in_output, (None, False)),
            ("skip_special_tokens", self.skip_special_tokens, (None, True)),
            ("spaces_between_special_tokens", self.spaces_between_special_tokens, (None, True)),
            ("truncate_prompt_tokens", self.truncate_prompt_tokens, (None,)),
            ("prompt_logprobs", self.prompt_logprobs, (None,)),
            *unsupported,
        ):
            if value not in neutral:
                raise bad_param(param, f"{param}={value!r} is not supported by this server")

    def _options(self, max_tokens: int, log_probs: bool, prompts: int = 1) -> dict[str, Any]:
        """The client's options (`ftprefix.client.GenerateOptions`) for this request."""
        if self.stream_options is not None and not self.stream:
            # as OpenAI and vLLM (`validate_stream_options` in vllm/entrypoints/openai/protocol.py)
            raise bad_param("stream_options", "stream_options is only allowed when stream is true")
        if self.stream and log_probs:
            raise bad_param(
                "stream", "log probabilities come with the whole answer: ask for them without stream"
            )
        stops: list[str | list[int]] = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        stops += [[token] for token in self.stop_token_ids or []]
        min_tokens = max_tokens if self.ignore_eos else (self.min_tokens or 0)
        if min_tokens > max_tokens:
            raise bad_param("min_tokens", f"min_tokens ({min_tokens}) is more than max_tokens ({max_tokens})")
        options: dict[str, Any] = {"max_new_tokens": max_tokens, "stop": stops or None}
        if min_tokens:
            options["min_new_tokens"] = min_tokens
        if self.bad_words:
            options["bad_words"] = list(self.bad_words)
        if self.repetition_penalty is not None:
            options["repetition_penalty"] = self.repetition_penalty
        if log_probs:
            options["return_log_probs"] = True
        temperature = 1.0 if self.temperature is None else self.temperature
        if temperature < GREEDY_BELOW:
            temperature = 0.0
        top_k = 0 if self.top_k in (None, -1) else self.top_k
        if temperature > 0:
            # FT samples (top-p, top-k or both) at this temperature; OpenAI samples unless told 0
            # every row (a prompt's choice) samples on its own, as OpenAI's do: FT gives rows of one
            # seed the same random numbers, so equal prompts, or a prompt's n choices, would agree.
            # A seed of the caller's is the first choice's of every prompt, as if it came alone
            # (vLLM's reading), the next choices' the seeds after it.
            n, rows = self.choices, prompts * self.choices
            seed: int | list[int]
            if self.seed is None:
                seed = secrets.randbits(63) if rows == 1 else [secrets.randbits(63) for _ in range(rows)]
            elif n == 1:
                seed = self.seed
            else:
                seed = [(self.seed + j) % MAX_SEED for _ in range(prompts) for j in range(n)]
            # FT: top_k alone (top_p 1) is top-k; top_p alone is nucleus sampling; both, top-k then top-p
            top_p = 1.0 if self.top_p is None else self.top_p
            options.update(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        return options  # temperature 0: FT's greedy decoding (top_k = top_p = 0)


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: Annotated[
        NonEmptyText
        | Annotated[list[NonEmptyText], Field(min_length=1)]
        | Annotated[list[TOKEN_ID], Field(min_length=1)]
        | Annotated[list[Annotated[list[TOKEN_ID], Field(min_length=1)]], Field(min_length=1)],
        WrapValidator(_integral_ids),
    ]
    max_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    echo: Annotated[bool, only(False)] | None = None
    logprobs: Annotated[int, Field(ge=0, le=5), only(0), INTEGRAL] | None = None
    best_of: Annotated[int, Field(ge=1), only(1), INTEGRAL] | None = None
    suffix: Annotated[str, only("")] | None = None

    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request (a list of them is one batch)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if isinstance(p[0], int):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def generate_options(self, default_max_tokens: int) -> dict[str, Any]:
        """The client options for this request, or ApiError(400) naming what cannot be served."""
        if self.best_of is not None and self.best_of < self.choices:
            raise bad_param("best_of", f"best_of ({self.best_of}) must be at least n ({self.choices})")
        self._refuse(
            [
                ("best_of", self.best_of, (None, 1)),
                ("echo", self.echo, (None, False)),
                ("suffix", self.suffix, (None, "")),
            ]
        )
        if self.logprobs:
            raise bad_param("logprobs", NO_ALTERNATIVES.format(ask="logprobs=0"))
        max_tokens = default_max_tokens if self.max_tokens is None else self.max_tokens
        return self._options(max_tokens, self.logprobs == 0, len(self.prompts()))


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    # As OpenAI's schema: every turn but the assistant's (which may carry tool calls instead) has
    # content. Taken as empty, a missing one made a prompt of the template's frame alone.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"role": {"const": "assistant"}}},
            "else": {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        }
    )

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | dict[str, Any]] | None = Field(None, validate_default=True)
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _content_unless_assistant(cls, content: Any, info: ValidationInfo) -> Any:
        if content is None and info.data.get("role", "assistant") != "assistant":
            raise PydanticCustomError("missing", "Field required")
        return content


class ResponseFormat(_Strict):
    type: Annotated[Literal["text", "json_object", "json_schema"], only("text")]
    json_schema: dict[str, Any] | None = None


class ChatRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20), only(0), INTEGRAL] | None = None
    tools: Annotated[list[dict[str, Any]], Field(json_schema_extra={"maxItems": 0})] | None = None
    tool_choice: Annotated[str, only("none")] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # OpenAI's chat fields that change no answer here (tags, cache hints, an end user's id), and
    # those taken only at the value that asks for nothing this server lacks: SDKs and frameworks
    # send them with their defaults, and OpenAI takes them
    metadata: Annotated[dict[str, str], Field(max_length=16)] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    safety_identifier: str | None = None
    store: Annotated[bool, only(False)] | None = None
    service_tier: (
        Annotated[Literal["auto", "default", "flex", "scale", "priority", "fast"], only("auto", "default")]
        | None
    ) = None
    modalities: Annotated[list[Literal["text", "audio"]], only(["text"])] | None = None
    functions: Annotated[list[dict[str, Any]], Field(json_schema_extra={"maxItems": 0})] | None = None
    function_call: Annotated[str, only("none")] | None = None
    audio: NULL_ONLY = None
    prediction: NULL_ONLY = None
    reasoning_effort: NULL_ONLY = None
    verbosity: NULL_ONLY = None
    web_search_options: NULL_ONLY = None

    def message_dicts(self) -> list[dict[str, Any]]:
        """The messages as chat templates read them: content a string (text parts joined)."""
        out = []
        for i, message in enumerate(self.messages):
            content = message.content
            if isinstance(content, list):
                if not all(isinstance(part, TextPart) for part in content):
                    raise bad_param(f"messages.{i}.content", "only text content parts can be served")
                content = "".join(part.text for part in content)  # type: ignore[union-attr]
            out.append({**message.model_dump(exclude_none=True), "content": content or ""})
        return out

    def generate_options(self, default_max_tokens: int) -> dict[str, Any]:
        self._refuse(
            [
                ("tools", self.tools, (None, [])),
                ("tool_choice", self.tool_choice, (None, "none")),
                ("functions", self.functions, (None, [])),
                ("function_call", self.function_call, (None, "none")),
                ("store", self.store, (None, False)),
                ("service_tier", self.service_tier, (None, "auto", "default")),
                ("modalities", self.modalities, (None, ["text"])),
                ("response_format", self.response_format and self.response_format.type, (None, "text")),
                ("audio", self.audio, (None,)),
                ("prediction", self.prediction, (None,)),
                ("reasoning_effort", self.reasoning_effort, (None,)),
                ("verbosity", self.verbosity, (None,)),
                ("web_search_options", self.web_search_options, (None,)),
            ]
        )
        if self.top_logprobs:
            raise bad_param("top_logprobs", NO_ALTERNATIVES.format(ask="logprobs=true without top_logprobs"))
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return self._options(default_max_tokens if limit is None else limit, bool(self.logprobs))

    @property
    def max_tokens_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"


# -- reading a body -----------------------------------------------------------------------------

# what the fields that take several shapes take, said once instead of one error per shape
_SHAPES = {
    "prompt": "a non-empty string, a list of them, a list of token ids or a list of token-id lists",
    "stop": f"a non-empty string or a list of up to {MAX_STOP} of them",
    "content": "a string or a list of content parts",
}


def _path(loc: Sequence[int | str]) -> list[str]:
    """A pydantic error location without the union-member tags it adds ("str", "list[int]")."""
    return [
        str(p)
        for p in loc
        if isinstance(p, int) or (p.isidentifier() and p not in ("str", "int", "float", "bool"))
    ]


def _lone_surrogate(value: Any, path: list[str]) -> list[str] | None:
    """The path of the first string holding a lone surrogate (not valid Unicode), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if _lone_surrogate(key, path) is not None:  # a field name that is not Unicode
                return [*path, key.encode("utf-8", "backslashreplace").decode("ascii")]
            found = _lone_surrogate(item, [*path, key])
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _lone_surrogate(item, [*path, str(index)])
            if found is not None:
                return found
    return None


def _dotted(path: list[str]) -> str:
    return ".".join(path) or "body"


def _from_validation(exc: ValidationError) -> ApiError:
    error = exc.errors(include_url=False)[0]
    path = _path(error["loc"])
    if error["type"] == "extra_forbidden":
        return ApiError(
            400,
            f"Unrecognized request argument supplied: {_dotted(path)}",
            param=_dotted(path),
            code="unknown_parameter",
        )
    if error["type"] == "missing":
        return ApiError(
            400,
            f"{_dotted(path)}: this field is required",
            param=_dotted(path),
            code="missing_required_parameter",
        )
    field = path[-1] if path and not path[-1].isdigit() else (path[-2] if len(path) > 1 else "")
    shape = _SHAPES.get(field) if len(error["loc"]) > len(path) or field in ("prompt", "stop") else None
    if shape is not None:
        where = path[: path.index(field) + 1]
        return ApiError(400, f"{_dotted(where)}: must be {shape}", param=_dotted(where), code="invalid_type")
    return ApiError(
        400, f"{_dotted(path)}: {error['msg']}", param=_dotted(path) if path else None, code="invalid_value"
    )


def parse_request(body: bytes, kind: type[_Sampling]) -> _Sampling:
    """The request in `body`, or the 400 that says what is wrong with it and where."""
    try:
        return kind.model_validate_json(body)
    except ValidationError as exc:
        if exc.errors()[0]["type"] != "json_invalid":
            raise _from_validation(exc) from None
    # not JSON for pydantic's parser: JSON with text that is not Unicode, or not JSON at all
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "the body is not valid JSON", code="invalid_json") from None
    try:
        bad = _lone_surrogate(data, [])
    except RecursionError:
        raise ApiError(400, "the body nests too deeply", code="invalid_json") from None
    if bad is not None:
        raise ApiError(
            400,
            f"{_dotted(bad)}: not valid Unicode text (a lone surrogate); send text as UTF-8",
            param=_dotted(bad),
            code="invalid_unicode",
        )
    raise ApiError(400, "the body is not valid JSON", code="invalid_json")
