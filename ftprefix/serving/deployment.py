"""A deployment directory: everything `docker compose up` needs to serve one conversion.

`ftprefix triton-repo CONVERTED --out DIR` writes:

    compose.yaml              the server: Triton + FT backend on GPUs (or, with target cpu, the
                              CPU twin); profile `openai` adds the gateway
    compose.cpu.yaml          a GPU deployment on CPU instead (`ftprefix serve --deployment`;
                              without Docker, `ftprefix serve DIR`)
    .env                      every setting compose reads; the user's edits survive a rewrite
    model_repository/         the Triton model repository (repository.write_repository)
    tokenizer/                the tokenizer files, for the gateway (with a tokenizer)
    image/                    the images' build context: Dockerfile.gpu, Dockerfile.cpu, patches/,
                              start-triton.sh, triton-python-models.txt, and the wheel of this ftprefix
    ftprefix-deployment.json  what ftprefix wrote: version, settings, every file's digest, .env values

Every path in the compose files is relative to DIR, so DIR can be moved; `.env` names the
conversion (FTPREFIX_MODEL_DIR: absolute, or relative when the conversion lies inside DIR).

Writing is safe the way conversions are: one run at a time per DIR (a lock file beside it), reading
the conversion under its shared lock; a new DIR is assembled beside it and renamed into place;
an existing one is updated only if ftprefix wrote it (its manifest), by this ftprefix version,
and only the files ftprefix wrote, each replaced atomically, the manifest last (it lists the old
and the new digest of every file while the update runs, so a killed update is not mistaken for
the user's edits). A file the user changed is never overwritten without --force; `.env` is
merged key by key: a value the user changed is kept. Writing again takes the deployment's own
settings for what is not asked anew (`resolve`): after `ftprefix tasks add`, `triton-repo
CONVERTED --out DIR` alone updates DIR as it was, its tokenizer read back from DIR/tokenizer,
rather than rewriting it with the defaults (a GPU target, no tokenizer, one instance).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar, cast

from ftprefix import __version__, assets, layout, locking
from ftprefix.errors import UserError
from ftprefix.serving import dotenv, repository
from ftprefix.serving.batching import DEFAULT_MAX_QUEUE_DELAY_US
from ftprefix.serving.wheel import build_wheel
from ftprefix.text import copy_tokenizer_files, load_tokenizer

MANIFEST = layout.DEPLOYMENT_MANIFEST
ENV_FILE = ".env"
REPOSITORY_DIR = "model_repository"
TOKENIZER_DIR = "tokenizer"
IMAGE_DIR = "image"
# deployment file -> shipped template, by target: `docker compose up` serves the target, and a GPU
# deployment can be tried on CPU with `-f compose.cpu.yaml`
COMPOSE_FILES = {
    "gpu": {"compose.yaml": "compose/gpu.yaml", "compose.cpu.yaml": "compose/cpu.yaml"},
    "cpu": {"compose.yaml": "compose/cpu.yaml"},
}
CONTAINER_MODEL_ROOT = "/ftprefix/model"  # where image/start-triton.sh links the conversion
GPU_IMAGE = f"ftprefix-fastertransformer:{__version__}"
CPU_IMAGE = f"ftprefix:{__version__}"
_EXECUTABLE = ("start-triton.sh",)
_T = TypeVar("_T")
NEWLINE_ENV = "FTPREFIX_NEWLINE_TOKEN"
SECRET_ENV = frozenset({"FTPREFIX_API_KEY"})  # never printed
_ENV_HEADER = (
    "# Settings of this deployment, read by docker compose (compose.yaml, compose.cpu.yaml).\n"
    "# `ftprefix triton-repo` wrote them; running it again keeps every value you changed here.\n"
)


@dataclass(frozen=True)
class Settings:
    """How the deployment serves: what `ftprefix serve --deployment` reads back."""

    target: str
    tensor_para_size: int
    instances: int
    streaming: bool
    max_queue_delay_us: int
    newline_token: str | None
    tokenizer: bool  # DIR/tokenizer holds the tokenizer


DEFAULTS = Settings(
    target=repository.GPU,
    tensor_para_size=1,  # the conversion's, never a choice
    instances=1,
    streaming=False,
    max_queue_delay_us=DEFAULT_MAX_QUEUE_DELAY_US,
    newline_token=None,
    tokenizer=False,
)


@dataclass(frozen=True)
class Request:
    """What a write asks for; None: as the deployment being updated was written (a new one: the
    default)."""

    target: str | None = None
    tokenizer_dir: Path | None = None
    no_tokenizer: bool = False  # drop the tokenizer an update would keep
    streaming: bool | None = None
    instances: int | None = None
    max_queue_delay_us: int | None = None
    newline_token: str | None = None  # "" for none


@dataclass(frozen=True)
class Resolved:
    """A Request with every choice made, and the options taken from the deployment, for the report."""

    target: str
    tokenizer_dir: Path | None
    streaming: bool
    instances: int
    max_queue_delay_us: int
    newline_token: str | None
    kept: list[str]


@dataclass
class Report:
    """What writing the deployment did, for the command to print."""

    path: Path
    created: bool
    settings: Settings
    info: repository.RepositoryInfo
    written: list[str] = field(default_factory=list)  # files new or changed
    removed: list[str] = field(default_factory=list)  # files ftprefix wrote before and no more
    unchanged: int = 0
    env_changed: list[tuple[str, str, str]] = field(default_factory=list)  # key, old, new
    env_kept: list[tuple[str, str, str]] = field(default_factory=list)  # key, yours, ftprefix's
    env: dict[str, str] = field(default_factory=dict)  # .env as written: what compose will read
    kept: list[str] = field(default_factory=list)  # options taken from the deployment, as flags

    @property
    def openai_port(self) -> str:
        """The host port of the gateway's service, as the compose files interpolate it."""
        return self.env.get("FTPREFIX_OPENAI_PORT") or "8080"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _model_dir_value(ft_dir: Path, out: Path) -> str:
    """FTPREFIX_MODEL_DIR: the conversion's output directory (its lock file coordinates `tasks add`
    on the host with the CPU server), relative when it moves with the deployment."""
    model_dir = ft_dir.parent.resolve()
    try:
        return "./" + model_dir.relative_to(out.resolve()).as_posix()
    except ValueError:
        return str(model_dir)


def read_manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({exc}); write the deployment to a new --out") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise UserError(f"{path} is not a deployment manifest ftprefix wrote; write to a new --out")
    return manifest


def read_settings(directory: str | os.PathLike[str]) -> Settings:
    """The settings a deployment directory was written with (for `ftprefix serve --deployment`)."""
    path = Path(directory)
    manifest = read_manifest(path)
    if manifest is None:
        raise UserError(
            f"{path} is not a deployment directory: no {MANIFEST} (ftprefix triton-repo --out writes one)"
        )
    try:
        return Settings(**manifest["settings"])
    except (KeyError, TypeError):
        raise UserError(f"{path / MANIFEST} has no settings this ftprefix reads; write it again") from None


def env_values(directory: str | os.PathLike[str]) -> dict[str, str]:
    """The values of a deployment's `.env`, as compose reads them."""
    env_path = Path(directory) / ENV_FILE
    try:
        return dotenv.parse(env_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{env_path} cannot be read ({exc}); write the deployment again") from None


def model_dir(directory: str | os.PathLike[str], env: Mapping[str, str]) -> Path:
    """The conversion a deployment directory serves: FTPREFIX_MODEL_DIR of its `.env` (`env`,
    its values), read as compose reads it (a relative path from the directory)."""
    path = Path(directory)
    env_path = path / ENV_FILE
    value = env.get("FTPREFIX_MODEL_DIR", "")
    if not value:
        raise UserError(f"{env_path} names no FTPREFIX_MODEL_DIR: set it to the converted model directory")
    conversion = path / value  # an absolute value stays as it is
    if not conversion.is_dir():
        raise UserError(
            f"{path} serves FTPREFIX_MODEL_DIR={value} ({env_path}), which is not a directory: "
            "set it to where the converted model is now"
        )
    return conversion


def _lock_name(out: Path) -> str:
    """The lock file of the deployment directory `out`, beside it (in it, for the root `/`)."""
    return f".{out.name}{layout.LOCK_FILE}"


def _check_out(out: Path, manifest: dict | None, force: bool) -> None:
    """Refuse to write into a directory ftprefix did not write, or one another version wrote."""
    if manifest is None:
        # `/` is its own parent: the lock this run holds is in it, and not one of the user's files
        lock = out.parent / _lock_name(out)
        others = sorted(p.name for p in out.iterdir() if p != lock) if out.is_dir() else []
        if others:
            if layout.ft_dirs(out):
                raise UserError(
                    f"--out {out} is a converted model; write its deployment to a directory of its "
                    "own (a new or empty one), e.g. --out deploy"
                )
            older = (
                " (an older ftprefix wrote plain model repositories: move it away)"
                if (out / "compose.env").exists()
                else ""
            )
            raise UserError(
                f"--out {out} holds files that are not a deployment's ({', '.join(others[:3])}"
                f"{', ...' if len(others) > 3 else ''}){older}; choose a new or empty directory"
            )
        return
    version = manifest.get("ftprefix")
    if version != __version__ and not force:
        raise UserError(
            f"--out {out} was written by ftprefix {version} and this is {__version__}: its image would "
            "change version; write to a new --out, or pass --force to rewrite it (your .env values and "
            "your own files are kept)"
        )


def _assemble(
    converted: Path,
    stage: Path,
    out: Path,
    choice: Resolved,
    wait: float,
) -> tuple[dict[str, bytes], dict[str, str], Settings, repository.RepositoryInfo]:
    """Every file of the deployment but .env and the manifest, the .env values, the settings."""
    ft_dir = layout.find_ft_dir(converted).resolve()
    gpu = choice.target == repository.GPU
    with locking.shared(ft_dir.parent, wait):  # never half-way through a `tasks add`
        cfg = layout.read_config(ft_dir)
        tp = cfg.tensor_para_size
        if choice.tokenizer_dir is not None:  # one line now if unreadable, or another model's
            tokenizer = load_tokenizer(choice.tokenizer_dir, newline_token=choice.newline_token)
            repository.check_tokenizer_fits(tokenizer, cfg, ft_dir)
        # a streaming model has no text ensemble (repository.write_repository says why): then the
        # tokenizer is for the gateway alone
        info = repository.write_repository(
            ft_dir,
            stage / REPOSITORY_DIR,
            target=choice.target,
            tokenizer_dir=None if choice.streaming else choice.tokenizer_dir,
            streaming=choice.streaming,
            checkpoint_path=f"{CONTAINER_MODEL_ROOT}/{ft_dir.name}" if gpu else None,
            instances=choice.instances,
            max_queue_delay_us=choice.max_queue_delay_us,
            newline_token=None if choice.streaming else choice.newline_token,
        )
    files = {f"{REPOSITORY_DIR}/{name}": data for name, data in _files_under(stage / REPOSITORY_DIR).items()}
    if choice.tokenizer_dir is not None:
        copy_tokenizer_files(choice.tokenizer_dir, stage / TOKENIZER_DIR)
        files.update({f"{TOKENIZER_DIR}/{n}": d for n, d in _files_under(stage / TOKENIZER_DIR).items()})
    files.update({f"{IMAGE_DIR}/{n}": d for n, d in assets.walk(IMAGE_DIR).items()})
    wheel_name, wheel = build_wheel()
    files[f"{IMAGE_DIR}/{wheel_name}"] = wheel
    for name, source in COMPOSE_FILES[choice.target].items():
        files[name] = assets.asset(source).read_bytes()
    env = {"FTPREFIX_MODEL_DIR": _model_dir_value(ft_dir, out)}
    if choice.target == repository.GPU:
        env.update(FTPREFIX_GPUS=str(choice.instances * tp), FTPREFIX_GPU_IMAGE=GPU_IMAGE)
    env.update(
        FTPREFIX_IMAGE=CPU_IMAGE,
        FTPREFIX_BASE_MODEL=info.config.model_name,  # the OpenAI API's name for the base model
        **{NEWLINE_ENV: choice.newline_token or ""},
        FTPREFIX_TRITON_ADDRESS="127.0.0.1",
        FTPREFIX_OPENAI_PORT="8080",
        FTPREFIX_API_KEY="",
    )
    settings = Settings(
        target=choice.target,
        tensor_para_size=tp,
        instances=choice.instances,
        streaming=choice.streaming,
        max_queue_delay_us=choice.max_queue_delay_us,
        newline_token=choice.newline_token,
        tokenizer=choice.tokenizer_dir is not None,
    )
    return files, env, settings, info


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    layout.atomic_write_bytes(path, data)
    _readable(path)


def _readable(path: Path) -> None:
    """Readable by everyone, as a checkout is: containers may run as another user than the writer
    (atomic writes start from a private temporary file)."""
    path.chmod(0o755 if path.is_dir() or path.name in _EXECUTABLE else 0o644)


def _manifest_bytes(files: dict[str, str], env: dict[str, str], settings: Settings, pending: dict) -> bytes:
    manifest = {
        "ftprefix": __version__,
        "settings": asdict(settings),
        "files": files,
        "env": env,
        **({"pending": pending} if pending else {}),
    }
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _merge_env(out: Path, ours: dict[str, str], before: dict[str, str], report: Report) -> bytes:
    """.env with ftprefix's values, except those the user changed since ftprefix wrote them."""
    path = out / ENV_FILE
    text = path.read_text(encoding="utf-8") if path.is_file() else _ENV_HEADER
    current = dotenv.parse(text)
    updates = {}
    for key, value in ours.items():
        if key not in current:
            updates[key] = value
        elif current[key] != before.get(key):  # the user's value (changed, or never ftprefix's)
            if current[key] != value:
                report.env_kept.append((key, current[key], value))
        elif current[key] != value:
            report.env_changed.append((key, current[key], value))
            updates[key] = value
    return dotenv.update(text, updates).encode("utf-8")


def write_deployment(
    converted: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    *,
    target: str | None = None,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    no_tokenizer: bool = False,
    streaming: bool | None = None,
    instances: int | None = None,
    max_queue_delay_us: int | None = None,
    newline_token: str | None = None,
    force: bool = False,
    wait: float = locking.DEFAULT_WAIT_S,
) -> Report:
    """Write or update the deployment directory `out` for `converted` (see the module's notes;
    None: the conversion the deployment already written there serves). A setting left None is the
    deployment's own when it is updated, else the default (DEFAULTS); `newline_token` "" is none.
    `wait`: seconds to wait for another run writing `out`, or changing the conversion."""
    out = Path(out)
    request = Request(
        target=target,
        tokenizer_dir=Path(tokenizer_dir) if tokenizer_dir is not None else None,
        no_tokenizer=no_tokenizer,
        streaming=streaming,
        instances=instances,
        max_queue_delay_us=max_queue_delay_us,
        newline_token=newline_token,
    )
    layout.check_creatable(out, "--out")
    if out.is_symlink():  # a link to a directory: write where it leads (a rename would replace it)
        out = out.resolve()
    # one run at a time per DIR: else both assemble a new DIR, and the second's rename meets the first's
    with locking.exclusive_making(out.parent, _lock_name(out), out, wait):
        manifest = read_manifest(out) if out.is_dir() else None
        if converted is None:  # `triton-repo --out DIR` after `tasks add`
            if manifest is None:
                raise UserError(
                    f"give the converted model to deploy: ftprefix triton-repo CONVERTED --out {out} "
                    "(only a deployment already written there names its own)"
                )
            converted = model_dir(out, env_values(out))
        _check_out(out, manifest, force)
        # beside DIR, on its filesystem: an atomic rename (the lock made DIR's parent)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.ftprefix-", dir=out.parent))
        try:
            choice = resolve(request, out, manifest, stage / "kept-tokenizer", force)
            (stage / "deployment").mkdir()
            files, env, settings, info = _assemble(Path(converted), stage / "deployment", out, choice, wait)
            report = Report(out, created=manifest is None, settings=settings, info=info, kept=choice.kept)
            digests = {name: _digest(data) for name, data in files.items()}
            if manifest is None:
                return _create(out, stage / "deployment", files, digests, env, settings, report)
            return _update(out, files, digests, env, settings, manifest, force, report)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _previous(manifest: dict | None) -> dict[str, object]:
    """The settings of the deployment being updated, each only where it has the type this version
    writes (a manifest of another version, rewritten with --force, may differ)."""
    settings = (manifest or {}).get("settings")
    if not isinstance(settings, dict):
        return {}
    kinds: dict[str, tuple[type, ...]] = {
        "target": (str,),
        "instances": (int,),
        "streaming": (bool,),
        "max_queue_delay_us": (int,),
        "newline_token": (str, type(None)),
        "tokenizer": (bool,),
    }
    return {
        name: value
        for name, value in settings.items()
        if name in kinds
        and isinstance(value, kinds[name])
        and not (kinds[name] == (int,) and isinstance(value, bool))
    }


def resolve(request: Request, out: Path, manifest: dict | None, scratch: Path, force: bool) -> Resolved:
    """Every choice of `request` made: what it asks, else what the deployment `out` (its
    `manifest`) was written with, else the default. A kept tokenizer is copied from `out` into
    `scratch` (the files ftprefix wrote there, nothing the user added beside them)."""
    if request.tokenizer_dir is not None and request.no_tokenizer:
        raise UserError("--tokenizer and --no-tokenizer contradict each other: give one of them")
    before = _previous(manifest)
    kept: list[str] = []

    def choose(name: str, asked: _T | None, flag: str) -> _T:
        if asked is not None:
            return asked
        default = getattr(DEFAULTS, name)
        value = before.get(name, default)
        if value != default:
            kept.append(flag.format(value=value))
        return cast(_T, value)

    target = choose("target", request.target, "--target {value}")
    if target not in (repository.GPU, repository.CPU):
        raise UserError(f"unknown target {target!r}: use {repository.GPU!r} or {repository.CPU!r}")
    if request.instances is not None and request.instances != 1 and target != repository.GPU:
        raise UserError(
            "--instances is for the GPU server (each instance on tensor_para_size GPUs); the CPU "
            "server sizes itself to the cores it sees when it starts (ftprefix serve --instances N)"
        )
    if request.instances is None and (target != repository.GPU or before.get("target") != repository.GPU):
        instances = DEFAULTS.instances  # instances of a GPU deployment mean nothing to a CPU one
    else:
        instances = choose("instances", request.instances, "--instances {value}")
    streaming = choose("streaming", request.streaming, "--streaming")
    delay = choose("max_queue_delay_us", request.max_queue_delay_us, "--max-queue-delay-us {value}")
    tokenizer_dir = request.tokenizer_dir
    if tokenizer_dir is None and not request.no_tokenizer and before.get("tokenizer") and manifest:
        tokenizer_dir = _kept_tokenizer(out, manifest, scratch, force)
        kept.append(f"--tokenizer {TOKENIZER_DIR}/ (the deployment's)")
    if request.newline_token is not None:
        newline = request.newline_token or None
    elif tokenizer_dir is None:  # the newline token is the tokenizer's: it goes with it
        newline = None
    elif (edited := _edited_env(out, manifest).get(NEWLINE_ENV)) is not None:
        # the gateway reads .env's value, the text models the one baked into their config: a
        # value edited in .env would split them, until written again, when it becomes the setting
        newline = edited or None
        kept.append(f"--newline-token {edited!r} (your .env's)")
    else:
        newline = choose("newline_token", request.newline_token, "--newline-token {value!r}")
    return Resolved(
        target=target,
        tokenizer_dir=tokenizer_dir,
        streaming=streaming,
        instances=instances,
        max_queue_delay_us=delay,
        newline_token=newline,
        kept=kept,
    )


def _edited_env(out: Path, manifest: dict | None) -> dict[str, str]:
    """The values of out/.env the user changed since ftprefix wrote them (its manifest's)."""
    written = (manifest or {}).get("env")
    if not isinstance(written, dict) or not (out / ENV_FILE).is_file():
        return {}
    return {key: value for key, value in env_values(out).items() if key in written and value != written[key]}


def _kept_tokenizer(out: Path, manifest: dict, scratch: Path, force: bool) -> Path:
    """The tokenizer files ftprefix wrote into out/tokenizer, copied to `scratch`."""
    names = [name for name in manifest["files"] if name.startswith(f"{TOKENIZER_DIR}/")]
    again = "give --tokenizer HF_DIR again, or --no-tokenizer to write it without one"
    if not names or not all((out / name).is_file() for name in names):
        raise UserError(
            f"{out} was written with a tokenizer and {out / TOKENIZER_DIR} is incomplete: {again}"
        )
    scratch.mkdir(parents=True)
    for name in names:
        data = (out / name).read_bytes()
        if not _ours(manifest, name, data) and not force:
            raise UserError(
                f"{out / name} was changed since ftprefix wrote it: {again} (or pass --force to write "
                "the deployment with the tokenizer as it is now)"
            )
        (scratch / name.removeprefix(f"{TOKENIZER_DIR}/")).write_bytes(data)
    return scratch


def _create(
    out: Path,
    stage: Path,
    files: dict[str, bytes],
    digests: dict[str, str],
    env: dict[str, str],
    settings: Settings,
    report: Report,
) -> Report:
    for name, data in files.items():
        if not (stage / name).is_file() or (stage / name).read_bytes() != data:
            _write_file(stage / name, data)
    env_text = dotenv.update(_ENV_HEADER, env)
    _write_file(stage / ENV_FILE, env_text.encode("utf-8"))
    report.env = dotenv.parse(env_text)
    _write_file(stage / MANIFEST, _manifest_bytes(digests, env, settings, {}))
    for path in [stage, *stage.rglob("*")]:
        _readable(path)
    if out.is_dir():
        out.rmdir()  # empty (checked): the stage takes its place
    os.rename(stage, out)
    report.written = [*sorted(files), ENV_FILE]
    return report


def _ours(manifest: dict, name: str, data: bytes) -> bool:
    """Whether `data` is what ftprefix wrote as file `name`: the manifest's digest, or the new one
    of an update that was killed before it ended (its `pending`)."""
    return _digest(data) in (manifest["files"].get(name), (manifest.get("pending") or {}).get(name))


def _update(
    out: Path,
    files: dict[str, bytes],
    digests: dict[str, str],
    env: dict[str, str],
    settings: Settings,
    manifest: dict,
    force: bool,
    report: Report,
) -> Report:
    before: dict[str, str] = manifest["files"]
    pending: dict[str, str] = manifest.get("pending") or {}
    changed = []
    for name, data in files.items():
        path = out / name
        current = path.read_bytes() if path.is_file() else None
        if current == data:
            report.unchanged += 1
            continue
        if current is not None and not _ours(manifest, name, current) and not force:
            hint = (
                " (put your changes in compose.override.yaml, which docker compose also reads)"
                if (name.startswith("compose."))
                else ""
            )
            raise UserError(
                f"{out / name} was changed since ftprefix wrote it{hint}; pass --force to overwrite it"
            )
        changed.append(name)
    stale = sorted(name for name in before if name not in files and (out / name).is_file())
    for name in stale:
        if not _ours(manifest, name, (out / name).read_bytes()) and not force:
            raise UserError(
                f"{out / name} was changed since ftprefix wrote it, and this deployment no longer has it; "
                "move it away or pass --force"
            )
    env_bytes = _merge_env(out, env, manifest.get("env") or {}, report)
    # while files change, both digests count as ftprefix's (a killed update is resumed, not refused)
    both = {name: digests[name] for name in changed}
    _write_file(out / MANIFEST, _manifest_bytes({**before, **digests}, env, settings, {**pending, **both}))
    for name in changed:
        _write_file(out / name, files[name])
    for name in stale:
        (out / name).unlink()
        _prune_empty_parents(out, out / name)
    env_path = out / ENV_FILE
    if not env_path.is_file() or env_path.read_bytes() != env_bytes:
        _write_file(env_path, env_bytes)
    _write_file(out / MANIFEST, _manifest_bytes(digests, env, settings, {}))
    report.written = changed
    report.removed = stale
    report.env = dotenv.parse(env_bytes.decode("utf-8"))
    return report


def _prune_empty_parents(root: Path, path: Path) -> None:
    parent = path.parent
    while parent != root and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
