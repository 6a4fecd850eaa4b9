"""The single source of truth for FasterTransformer's GPT-NeoX on-disk format.

Everything that names an FT file, gives its shape, says how it is split across tensor-parallel
ranks, or reads/writes `config.ini` lives here. The converter writes through it, the engine reads
through it; neither knows a file name of its own.

Facts checked against NVIDIA/FasterTransformer:
- src/fastertransformer/triton_backend/gptneox/GptNeoXTritonModel.cc (config.ini keys, task table)
- src/fastertransformer/models/gptneox/GptNeoXWeight.cc (model.wte / lm_head / prefix file names)
- src/fastertransformer/models/gptneox/GptNeoXDecoderLayerWeight.cc (per-layer files and shapes;
  with use_gptj_residual=1 only `mlp.attention.bias.sum` is read, the two row-parallel biases not)
- src/fastertransformer/models/gptneox/GptNeoX.h (layernorm_eps_, fixed, not the model's own eps)

docs/design.md explains the format in prose.
"""

from __future__ import annotations

import configparser
import enum
import errno
import io
import os
import re
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ftprefix.errors import UserError
from ftprefix.task_table import RETIRED_PREFIX, TaskTable

SECTION = "gptneox"
CONFIG_FILE = "config.ini"
PROMPT_LEARNING_TYPE_PREFIX = 2  # FT's PromptLearningType::prefix_prompt
ROTARY_BASE = 10000.0  # hard-coded in FT's rotary kernels
# FT df4a753 src/fastertransformer/models/gptneox/GptNeoX.h:43 `static constexpr float layernorm_eps_
# = 1e-5f`, whatever the model's config says (1e-6 is GPT-J's, gptj/GptJ.h:42)
LAYERNORM_EPS = 1e-5
SUPPORTED_TP = (1, 2, 4, 8)

WEIGHT_DTYPES: dict[str, np.dtype] = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2")}

# INIReader (FT's config parser) splits on '=' / ':' and trims whitespace, and task names become
# part of file names, so only a conservative character set survives the round trip.
_TASK_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")  # the whole name (fullmatch: `$` takes a last "\n")
# FT's INIReader (3rdparty/INIReader.h) reads config.ini with fgets into a buffer of INI_MAX_LINE =
# 200 bytes: a longer line is cut, and the rest read as another line. So every line, its newline
# included, must fit in 199 bytes; for `task_name = <name>` that leaves 186 bytes for the name.
INI_MAX_LINE = 200
_TASK_NAME_KEY = "task_name = "
MAX_TASK_NAME = INI_MAX_LINE - 1 - len(_TASK_NAME_KEY) - 1
# In a retired slot's section, the name of the task that was removed (`removed = <name>` fits too)
REMOVED_KEY = "removed"

# Files ftprefix owns in a conversion's output directory, besides the `<tp>-gpu` directories:
LOCK_FILE = ".ftprefix.lock"  # see ftprefix.locking
# `.<tp>-gpu.tmp-XXXX` (a conversion being written) and `.<tp>-gpu.old-XXXX` (the one it replaces)
STAGING_RE = re.compile(r"^\.(\d+)-gpu\.(tmp|old)-[A-Za-z0-9_]+$")
FT_DIR_RE = re.compile(r"^(\d+)-gpu$")
# Files ftprefix writes inside `<tp>-gpu`: config.ini (and its temporary files), raw arrays
FT_FILE_RE = re.compile(r"^(config\.ini|\.config\.ini\.[A-Za-z0-9_]+\.tmp|model\..+\.bin)$")
PREFIX_FILE_RE = re.compile(r"^model\.prefix_prompt\.(.+)\.weight\.(\d+)\.bin$")
# what `ftprefix triton-repo` writes into a deployment directory (serving/deployment.py), named
# here so that commands given one where a conversion belongs can say what it is
DEPLOYMENT_MANIFEST = "ftprefix-deployment.json"


def ft_dir(out: str | os.PathLike[str], tp: int) -> Path:
    """FT convention: weights for tensor-parallel size `tp` live in `<out>/<tp>-gpu/`."""
    return Path(out) / f"{tp}-gpu"


def ft_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """The conversions `path` is or holds: itself, where it is a `<tp>-gpu` directory (its
    config.ini), else its `<tp>-gpu` subdirectories."""
    p = Path(path)
    if (p / CONFIG_FILE).is_file():
        return [p]
    return sorted(d for d in p.glob("*-gpu") if (d / CONFIG_FILE).is_file()) if p.is_dir() else []


def find_ft_dir(path: str | os.PathLike[str]) -> Path:
    """Accept either the `<tp>-gpu` directory itself or its parent holding exactly one such directory."""
    p = Path(path)
    candidates = ft_dirs(p)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates and (p / DEPLOYMENT_MANIFEST).is_file():
        raise UserError(
            f"{p} is a deployment directory (ftprefix triton-repo wrote it), not a converted model: give "
            f"the conversion it serves (FTPREFIX_MODEL_DIR in {p / '.env'})"
        )
    if not candidates:
        raise UserError(f"{p} is not a converted model: no {CONFIG_FILE} in it or in a <tp>-gpu subdirectory")
    names = ", ".join(c.name for c in candidates)
    raise UserError(f"{p} holds several conversions ({names}); pass one of them")


def validate_task_name(name: str) -> None:
    if not name:
        raise UserError("empty task name; give each prefix a name, e.g. --prefix taskA=path")
    if not _TASK_NAME_RE.fullmatch(name):
        raise UserError(
            f"task name {name!r} cannot be read back by FasterTransformer "
            "(use only letters, digits, '_', '-', '.'; no whitespace, '/', '[', ']', '=')"
        )
    if name in (".", ".."):
        raise UserError(f"task name {name!r} is not a valid file name part")
    if name.startswith(RETIRED_PREFIX):
        raise UserError(
            f"task name {name!r}: names starting with {RETIRED_PREFIX!r} are the slots of removed tasks; "
            "choose another name"
        )
    if len(name) > MAX_TASK_NAME:
        raise UserError(
            f"task name {name[:20]}... is {len(name)} characters long; FasterTransformer reads config.ini "
            f"lines of at most {INI_MAX_LINE - 1} bytes, so task names can have at most {MAX_TASK_NAME}"
        )


@dataclass(frozen=True)
class ModelConfig:
    """Everything in `config.ini` FT reads, plus `tensor_para_size` (FT ignores unknown keys)."""

    model_name: str
    head_num: int
    size_per_head: int
    inter_size: int
    num_layer: int
    rotary_embedding: int
    vocab_size: int
    start_id: int
    end_id: int
    use_gptj_residual: bool
    weight_data_type: str
    tensor_para_size: int
    tasks: TaskTable = field(default_factory=TaskTable)

    @property
    def hidden_units(self) -> int:
        return self.head_num * self.size_per_head

    @property
    def np_dtype(self) -> np.dtype:
        return WEIGHT_DTYPES[self.weight_data_type]

    def with_tasks(self, tasks: TaskTable) -> ModelConfig:
        return replace(self, tasks=tasks)


# ---------------------------------------------------------------------------------------------
# config.ini


def config_to_text(cfg: ModelConfig) -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case
    section = {
        "model_name": cfg.model_name,
        "head_num": str(cfg.head_num),
        "size_per_head": str(cfg.size_per_head),
        "inter_size": str(cfg.inter_size),
        "num_layer": str(cfg.num_layer),
        "rotary_embedding": str(cfg.rotary_embedding),
        "vocab_size": str(cfg.vocab_size),
        "start_id": str(cfg.start_id),
        "end_id": str(cfg.end_id),
        "use_gptj_residual": str(int(cfg.use_gptj_residual)),
        "weight_data_type": cfg.weight_data_type,
        "tensor_para_size": str(cfg.tensor_para_size),
    }
    if cfg.tasks:
        section["num_tasks"] = str(len(cfg.tasks))
        section["prompt_learning_type"] = str(PROMPT_LEARNING_TYPE_PREFIX)
    parser[SECTION] = section
    for task in cfg.tasks:
        entry = {"task_name": task.name, "prompt_length": str(task.prompt_length)}
        if task.removed is not None:  # a retired slot: which task it was (FT reads only the two above)
            entry[REMOVED_KEY] = task.removed
        parser[f"task_{task.id}"] = entry
    buf = io.StringIO()
    parser.write(buf)
    text = buf.getvalue()
    for line in text.splitlines():
        if len(line.encode("utf-8")) + 1 >= INI_MAX_LINE:
            key = line.split("=", 1)[0].strip()
            raise UserError(
                f"config.ini line {key!r} would be {len(line) + 1} bytes; FasterTransformer cuts lines at "
                f"{INI_MAX_LINE - 1} bytes: shorten it"
            )
    return text


def config_from_text(text: str, source: str = CONFIG_FILE) -> ModelConfig:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    invalid = _not_valid(source)
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise UserError(f"{invalid}: {_parse_error(exc, text)}") from None
    read = _IniReader(parser, invalid)
    num_tasks = read.integer(SECTION, "num_tasks", 0)
    tasks = []
    for i in range(num_tasks):
        section = f"task_{i}"
        if not parser.has_section(section):
            raise UserError(
                f"{invalid}: it has no [{section}] (num_tasks = {num_tasks}: tasks 0 to {num_tasks - 1})"
            )
        tasks.append(
            (
                read.text(section, "task_name"),
                read.integer(section, "prompt_length"),
                read.text(section, REMOVED_KEY, None),
            )
        )
    try:
        table = TaskTable(tasks)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{invalid}: {exc}") from None
    dtype = read.text(SECTION, "weight_data_type", "fp32")
    if dtype not in WEIGHT_DTYPES:
        raise UserError(f"{source}: weight_data_type {dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    return ModelConfig(
        model_name=read.text(SECTION, "model_name", "gptneox"),
        head_num=read.integer(SECTION, "head_num"),
        size_per_head=read.integer(SECTION, "size_per_head"),
        inter_size=read.integer(SECTION, "inter_size"),
        num_layer=read.integer(SECTION, "num_layer"),
        rotary_embedding=read.integer(SECTION, "rotary_embedding"),
        vocab_size=read.integer(SECTION, "vocab_size"),
        start_id=read.integer(SECTION, "start_id"),
        end_id=read.integer(SECTION, "end_id"),
        use_gptj_residual=bool(read.integer(SECTION, "use_gptj_residual", 1)),
        weight_data_type=dtype,
        tensor_para_size=read.integer(SECTION, "tensor_para_size", 1),
        tasks=table,
    )


def _not_valid(source: str | os.PathLike[str]) -> str:
    return f"{source} is not a valid FasterTransformer GPT-NeoX config"


def _parse_error(exc: configparser.Error, text: str) -> str:
    """What configparser could not read, in one line (its own messages span lines)."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno} comes before any [section]: {exc.line.rstrip()!r}"
    if isinstance(exc, configparser.ParsingError):
        lineno = exc.errors[0][0]
        return f"line {lineno} is neither a [section] nor key = value: {text.splitlines()[lineno - 1]!r}"
    return "; ".join(line.strip() for line in str(exc).splitlines())


_REQUIRED: Any = object()


class _IniReader:
    """config.ini's values, each missing or malformed one refused in a line naming it."""

    def __init__(self, parser: configparser.ConfigParser, invalid: str) -> None:
        self.parser = parser
        self.invalid = invalid

    def text(self, section: str, key: str, default: Any = _REQUIRED) -> Any:
        if not self.parser.has_section(section):
            raise UserError(f"{self.invalid}: it has no [{section}]")
        value = self.parser[section].get(key)
        if value is None:
            if default is _REQUIRED:
                raise UserError(f"{self.invalid}: [{section}] has no {key}")
            return default
        return value

    def integer(self, section: str, key: str, default: Any = _REQUIRED) -> Any:
        value = self.text(section, key, default)
        if value is default:
            return value
        try:
            return int(value)
        except ValueError:
            raise UserError(f"{self.invalid}: [{section}] {key} = {value!r} is not an integer") from None


def read_config(directory: str | os.PathLike[str]) -> ModelConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{directory} is not a converted model directory: {CONFIG_FILE} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{_not_valid(path)}: it is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    return config_from_text(text, source=str(path))


def write_config(directory: str | os.PathLike[str], cfg: ModelConfig) -> Path:
    """Write `config.ini` atomically (temp file in the same directory, then rename)."""
    path = Path(directory) / CONFIG_FILE
    atomic_write_bytes(path, config_to_text(cfg).encode("utf-8"))
    return path


def check_creatable(path: Path, option: str) -> None:
    """Refuse (UserError) an output directory `path` that is a file, or cannot be made because a
    file stands where one of its parents should be, or a symbolic link leading where nothing is
    stands where it or one of its parents should be (mkdir fails on one), before anything is
    staged beside it."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} exists and is not a directory; give another path")
    for part in (path, *path.parents):  # up to the first that exists
        if part.exists():
            if not part.is_dir():
                raise UserError(f"{option} {path} cannot be created: {part} is a file, not a directory")
            if part != path:
                _check_takes_new_entries(part, path, option)
            return
        if part.is_symlink():
            raise UserError(
                f"{option} {path} cannot be created: {part} is a link to {os.readlink(part)}, where "
                "nothing is; create that directory, or give another path"
            )


def _check_takes_new_entries(directory: Path, path: Path, option: str) -> None:
    """Refuse `path` where `directory`, the first of its parents that exists, takes no new entries
    at all: a kernel file system such as /proc (mkdir answers ENOENT, which read as a bug's
    traceback) or /sys (EPERM). A directory made and removed again is the only test that is sure;
    what a disk refuses (read-only, full, not allowed) is said where the write meets it."""
    try:
        probe = tempfile.mkdtemp(prefix=".ftprefix-probe-", dir=directory)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EPERM):
            return
        raise UserError(
            f"{option} {path} cannot be created: {directory} takes no new files or directories "
            f"({exc.strerror}), as a kernel file system such as /proc or /sys; give a path on a disk"
        ) from None
    os.rmdir(probe)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` all at once: a temporary file beside it, renamed into place.
    The file gets the mode any new file gets (0o666 less the umask), not a private temporary
    file's 0o600: a converted model is read by Triton in a container that may run as another user
    (OpenShift gives each pod an arbitrary one), which a private config.ini stops."""
    fd, tmp = _new_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # the rename itself must survive a crash too
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _new_file_beside(path: Path) -> tuple[int, str]:
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:  # os.open applies the umask to 0o666, as open() does for any new file
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


# ---------------------------------------------------------------------------------------------
# Base weights: names, shapes, split rules


class Split(enum.Enum):
    NONE = "none"  # one file, `<name>.bin`
    QKV_WEIGHT = "qkv_weight"  # [hidden, 3, heads, head_dim], heads axis split
    QKV_BIAS = "qkv_bias"  # [3, heads, head_dim], heads axis split
    ROWS = "rows"  # split axis 0 (input features of a row-parallel layer)
    COLS = "cols"  # split last axis (output features of a column-parallel layer)


@dataclass(frozen=True)
class TensorSpec:
    """One FT tensor. `sources` are the HF GPT-NeoX tensors it is built from (see `hf_to_ft`)."""

    name: str  # file stem, e.g. "model.layers.0.attention.dense.weight"
    shape: tuple[int, ...]  # full FT shape before splitting
    split: Split
    sources: tuple[str, ...]
    transpose: bool = False  # HF Linear weight [out, in] -> FT [in, out]
    # `mlp.attention.bias.sum` is added by every rank before the all-reduce, so FT needs it / tp.
    divide_by_tp: bool = False

    def file_names(self, tp: int) -> list[str]:
        if self.split is Split.NONE:
            return [f"{self.name}.bin"]
        return [f"{self.name}.{r}.bin" for r in range(tp)]

    def rank_shape(self, tp: int) -> tuple[int, ...]:
        shape = list(self.shape)
        if self.split is Split.NONE:
            return tuple(shape)
        axis = _SPLIT_AXIS[self.split]
        shape[axis] //= tp
        return tuple(shape)


_SPLIT_AXIS = {Split.QKV_WEIGHT: 2, Split.QKV_BIAS: 1, Split.ROWS: 0, Split.COLS: -1}

HF_LAYER = "gpt_neox.layers.{i}."


def layer_tensors(cfg: ModelConfig, i: int) -> list[TensorSpec]:
    h, heads, hd, inter = cfg.hidden_units, cfg.head_num, cfg.size_per_head, cfg.inter_size
    ft, hf = f"model.layers.{i}.", HF_LAYER.format(i=i)

    def same_name(name: str, shape: tuple[int, ...], split: Split, transpose: bool = False) -> TensorSpec:
        return TensorSpec(ft + name, shape, split, (hf + name,), transpose)

    specs = [
        same_name("input_layernorm.weight", (h,), Split.NONE),
        same_name("input_layernorm.bias", (h,), Split.NONE),
        same_name("post_attention_layernorm.weight", (h,), Split.NONE),
        same_name("post_attention_layernorm.bias", (h,), Split.NONE),
        same_name("attention.query_key_value.weight", (h, 3, heads, hd), Split.QKV_WEIGHT, transpose=True),
        same_name("attention.query_key_value.bias", (3, heads, hd), Split.QKV_BIAS),
        same_name("attention.dense.weight", (h, h), Split.ROWS, transpose=True),
        same_name("attention.dense.bias", (h,), Split.NONE),
        same_name("mlp.dense_h_to_4h.weight", (h, inter), Split.COLS, transpose=True),
        same_name("mlp.dense_h_to_4h.bias", (inter,), Split.COLS),
        same_name("mlp.dense_4h_to_h.weight", (inter, h), Split.ROWS, transpose=True),
        same_name("mlp.dense_4h_to_h.bias", (h,), Split.NONE),
    ]
    if cfg.use_gptj_residual:
        specs.append(
            TensorSpec(
                ft + "mlp.attention.bias.sum",
                (h,),
                Split.NONE,
                (hf + "attention.dense.bias", hf + "mlp.dense_4h_to_h.bias"),
                divide_by_tp=True,
            )
        )
    return specs


# HF names of the output head: transformers 5.x calls it `lm_head.weight` in memory, while
# `save_pretrained` (and every published checkpoint) writes `embed_out.weight`.
HF_LM_HEAD_NAMES = ("embed_out.weight", "lm_head.weight")


def global_tensors(cfg: ModelConfig) -> list[TensorSpec]:
    h, v = cfg.hidden_units, cfg.vocab_size
    return [
        TensorSpec("model.wte", (v, h), Split.NONE, ("gpt_neox.embed_in.weight",)),
        TensorSpec("model.final_layernorm.weight", (h,), Split.NONE, ("gpt_neox.final_layer_norm.weight",)),
        TensorSpec("model.final_layernorm.bias", (h,), Split.NONE, ("gpt_neox.final_layer_norm.bias",)),
        # stored as HF has it, [vocab, hidden]: FT multiplies by its transpose
        TensorSpec("model.lm_head.weight", (v, h), Split.NONE, (HF_LM_HEAD_NAMES[0],)),
    ]


def base_tensors(cfg: ModelConfig) -> list[TensorSpec]:
    """Every base-model tensor FT may read, in a stable order."""
    specs = global_tensors(cfg)
    for i in range(cfg.num_layer):
        specs.extend(layer_tensors(cfg, i))
    return specs


def hf_to_ft(spec: TensorSpec, sources: Sequence[np.ndarray], cfg: ModelConfig) -> list[np.ndarray]:
    """HF tensor(s) -> FT array per file of `spec.file_names(tp)` (one for unsplit tensors).

    Arithmetic happens in the sources' dtype; the caller casts to the weight dtype afterwards
    (so a bias sum of fp32 sources is summed in fp32, then rounded once).
    """
    tp = cfg.tensor_para_size
    if len(sources) != len(spec.sources):
        raise ValueError(f"{spec.name}: expected {len(spec.sources)} sources, got {len(sources)}")
    x = sources[0] if len(sources) == 1 else np.sum(np.stack(sources), axis=0)
    if spec.divide_by_tp:
        x = x / np.asarray(tp, dtype=x.dtype)
    if spec.transpose:
        x = x.T
    heads, hd, h = cfg.head_num, cfg.size_per_head, cfg.hidden_units
    if spec.split is Split.QKV_WEIGHT:
        # HF fuses q/k/v per head: output rows ordered [heads, 3, head_dim]
        x = x.reshape(h, heads, 3, hd).transpose(0, 2, 1, 3)
    elif spec.split is Split.QKV_BIAS:
        x = x.reshape(heads, 3, hd).transpose(1, 0, 2)
    if tuple(x.shape) != spec.shape:
        raise ValueError(f"{spec.name}: expected shape {spec.shape}, got {tuple(x.shape)}")
    if spec.split is Split.NONE:
        return [np.ascontiguousarray(x)]
    return [np.ascontiguousarray(p) for p in np.split(x, tp, axis=_SPLIT_AXIS[spec.split])]


def join_ranks(spec: TensorSpec, parts: Sequence[np.ndarray]) -> np.ndarray:
    """Rank files of `spec` (already reshaped to `rank_shape`) -> the full FT-shaped tensor."""
    if len(parts) == 1:  # unsplit, or tp 1: as read (a mapped file stays mapped)
        (only,) = parts
        return only
    if spec.split is Split.NONE:
        raise ValueError(f"{spec.name} is one file, not {len(parts)}")
    return np.concatenate(list(parts), axis=_SPLIT_AXIS[spec.split])


def _check_array_file(path: Path, shape: Sequence[int], dtype: np.dtype) -> None:
    expected = int(np.prod(shape)) * dtype.itemsize
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"missing weight file {path}") from None
    if size != expected:
        raise UserError(f"{path} has {size} bytes, expected {expected} for shape {tuple(shape)} {dtype.name}")


def read_array(
    path: str | os.PathLike[str], shape: Sequence[int], dtype: np.dtype, *, mapped: bool = False
) -> np.ndarray:
    """Read one raw FT file, checking its size matches `shape` exactly. `mapped`: the file's pages,
    shared with every process that maps it, rather than a copy (copy on write: never written back)."""
    path = Path(path)
    _check_array_file(path, shape, dtype)
    if mapped:
        return np.memmap(path, dtype=dtype, mode="c", shape=tuple(shape))
    return np.fromfile(path, dtype=dtype).reshape(shape)


def weight_files(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Every file FT reads for `cfg` and its shape (in `cfg.np_dtype`): the base model's tensors,
    then each live task's prefix."""
    tp = cfg.tensor_para_size
    files = [(name, spec.rank_shape(tp)) for spec in base_tensors(cfg) for name in spec.file_names(tp)]
    for task in cfg.tasks.live:
        shape = prefix_rank_shape(cfg, task.prompt_length)
        files += [(name, shape) for name in prefix_file_names(task.name, tp)]
    return files


def check_weight_files(directory: str | os.PathLike[str], cfg: ModelConfig) -> None:
    """Every file FT reads for `cfg` (base tensors, each live task's prefix) is there with its size,
    or a UserError naming the first that is not. FT itself only warns about a file it cannot open
    and runs on with whatever the buffer held (`loadWeightFromBin`, FasterTransformer
    `src/fastertransformer/utils/memory_utils.cc`): a serving model with wrong answers."""
    d = Path(directory)
    try:
        for name, shape in weight_files(cfg):
            _check_array_file(d / name, shape, cfg.np_dtype)
    except UserError as exc:
        raise UserError(f"{exc}: the conversion in {d} is incomplete or was changed; convert again") from None


def write_array(path: str | os.PathLike[str], data: np.ndarray) -> None:
    """Write one raw FT file: the array's bytes in C order, nothing else. Through Python's file
    object, so a full disk is an OSError that names its cause (ENOSPC) and the file, where numpy's
    tofile says only how many bytes it wrote."""
    try:
        with open(path, "wb") as f:
            f.write(memoryview(np.ascontiguousarray(data)).cast("B"))
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from None  # a failed write names no file


def read_tensor(
    directory: str | os.PathLike[str], spec: TensorSpec, cfg: ModelConfig, *, mapped: bool = False
) -> np.ndarray:
    """All rank files of `spec` joined into the full FT-shaped tensor, in the stored dtype.
    `mapped` (see read_array) maps a tensor of one file; joined ones are copies either way."""
    d = Path(directory)
    rank_shape = spec.rank_shape(cfg.tensor_para_size)
    files = spec.file_names(cfg.tensor_para_size)
    parts = [read_array(d / f, rank_shape, cfg.np_dtype, mapped=mapped) for f in files]
    return join_ranks(spec, parts)


# ---------------------------------------------------------------------------------------------
# Prefixes


def prefix_file_names(task: str, tp: int) -> list[str]:
    return [f"model.prefix_prompt.{task}.weight.{r}.bin" for r in range(tp)]


def prefix_width(cfg: ModelConfig) -> int:
    """Values per prefix token in the canonical [P, layers*2*hidden] tensor."""
    return cfg.num_layer * 2 * cfg.hidden_units


def prefix_rank_shape(cfg: ModelConfig, prompt_length: int) -> tuple[int, ...]:
    return (cfg.num_layer, 2, cfg.head_num // cfg.tensor_para_size, prompt_length, cfg.size_per_head)


def prefix_to_ft(prefix: np.ndarray, cfg: ModelConfig) -> list[np.ndarray]:
    """Canonical prefix [P, layers*2*hidden] (layer, key/value, head, head_dim) -> per-rank arrays
    [layers, 2, heads/tp, P, head_dim] (FT's prefix_prompt layout, heads split across ranks)."""
    p = prefix.shape[0]
    x = prefix.reshape(p, cfg.num_layer, 2, cfg.head_num, cfg.size_per_head).transpose(1, 2, 3, 0, 4)
    return [np.ascontiguousarray(part) for part in np.split(x, cfg.tensor_para_size, axis=2)]


def prefix_from_ft(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Per-rank [layers, 2, heads/tp, P, head_dim] arrays -> [P, layers, 2, heads, head_dim]."""
    return np.ascontiguousarray(np.concatenate(list(parts), axis=2).transpose(3, 0, 1, 2, 4))


def read_prefix(
    directory: str | os.PathLike[str], cfg: ModelConfig, name: str, prompt_length: int
) -> np.ndarray:
    """A task's prefix as [P, layers, 2, heads, head_dim] in the stored dtype."""
    d = Path(directory)
    shape = prefix_rank_shape(cfg, prompt_length)
    files = prefix_file_names(name, cfg.tensor_para_size)
    parts = [read_array(d / f, shape, cfg.np_dtype) for f in files]
    return prefix_from_ft(parts)
