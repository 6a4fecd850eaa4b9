"""The wheel of the ftprefix that is running, built from its own installed files.

A deployment's images install exactly the ftprefix that wrote the deployment, whether it came
from a clone (an editable install) or from PyPI: the package directory this module was imported
from, with the distribution's metadata (METADATA, entry_points.txt), zipped as a pure-Python wheel
(PEP 427). The bytes depend only on the files: entries sorted, timestamps fixed, so writing a
deployment again with the same ftprefix changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from importlib import metadata
from pathlib import Path

import ftprefix
from ftprefix.errors import UserError

DISTRIBUTION = "ftprefix"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


def wheel_name(version: str = ftprefix.__version__) -> str:
    return f"{DISTRIBUTION}-{version}-py3-none-any.whl"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
    return f"sha256={digest}"


def _package_files() -> dict[str, bytes]:
    package = Path(ftprefix.__file__).resolve().parent
    files = {}
    for path in sorted(package.rglob("*")):
        parts = path.relative_to(package).parts
        if path.is_file() and not _SKIP_DIRS & set(parts) and not path.name.endswith(_SKIP_SUFFIXES):
            files[f"{DISTRIBUTION}/{'/'.join(parts)}"] = path.read_bytes()
    return files


def _metadata_files(version: str) -> dict[str, bytes]:
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise UserError(
            "ftprefix runs without its package metadata (not installed): install it (pip install "
            "ftprefix, or pip install -e . in a clone) so its deployment can install the same version"
        ) from None
    if dist.version != version:
        raise UserError(
            f"the installed metadata says ftprefix {dist.version} but the code is {version}: install it "
            "again (pip install -e . in a clone) before writing a deployment"
        )
    info = f"{DISTRIBUTION}-{version}.dist-info"
    # an egg-info (a source tree on sys.path) calls it PKG-INFO; the format is the same
    core = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
    if not core:
        raise UserError(f"ftprefix's installed metadata has no METADATA file ({dist.locate_file('')})")
    files = {f"{info}/METADATA": core.encode("utf-8")}
    entry_points = dist.read_text("entry_points.txt")
    if entry_points:
        files[f"{info}/entry_points.txt"] = entry_points.encode("utf-8")
    files[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: ftprefix\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    ).encode("ascii")
    return files


def build_wheel() -> tuple[str, bytes]:
    """(file name, bytes) of the running ftprefix as a wheel."""
    version = ftprefix.__version__
    files = {**_package_files(), **_metadata_files(version)}
    record_name = f"{DISTRIBUTION}-{version}.dist-info/RECORD"
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    files[record_name] = (record + f"{record_name},,\n").encode("utf-8")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=_EPOCH)
            entry.external_attr = (0o100755 if name.endswith(".sh") else 0o100644) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(entry, data)
    return wheel_name(version), buffer.getvalue()
