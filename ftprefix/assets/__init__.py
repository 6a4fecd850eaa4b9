"""The files ftprefix ships for deployment, installed with it as package data, and what they pin.

    image/           the GPU image (Dockerfile.gpu: Triton + the FasterTransformer backend, FT pinned
                     and patched), the CPU image (Dockerfile.cpu), start-triton.sh, the FT patches,
                     the pinned packages of the image's python models
    compose/         gpu.yaml and cpu.yaml, the compose files of a deployment directory
    kubernetes/      manifests for GPU or CPU replicas, the OpenAI gateway and its autoscaler
    chat-templates/  chat templates for models that ship none (rinna's instruction format)

`ftprefix triton-repo --out DIR` copies image/ and compose/ into a deployment directory; `ftprefix
assets` says where the rest is. This is the one copy: the repository has no other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

GPU_DOCKERFILE = "image/Dockerfile.gpu"


def root() -> Traversable:
    return resources.files(__name__)


def asset(name: str) -> Traversable:
    """One shipped file or directory, by its path under the assets (e.g. "image/Dockerfile.gpu")."""
    node = root()
    for part in name.strip("/").split("/"):
        if part:
            node = node.joinpath(part)
    return node


def walk(name: str) -> dict[str, bytes]:
    """Every file under one asset directory: path relative to it -> content."""
    files: dict[str, bytes] = {}

    def visit(node: Traversable, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.name == "__pycache__" or child.name.endswith(".pyc"):
                continue
            path = f"{prefix}{child.name}"
            if child.is_dir():
                visit(child, path + "/")
            else:
                files[path] = child.read_bytes()

    visit(asset(name), "")
    return files


@dataclass(frozen=True)
class ImagePins:
    """What the GPU image is built from, as Dockerfile.gpu's ARG lines say."""

    triton: str
    fastertransformer: str
    backend: str
    patches: tuple[str, ...]

    def describe(self) -> str:
        return (
            f"GPU image: Triton {self.triton}, NVIDIA/FasterTransformer {self.fastertransformer}, "
            f"triton-inference-server/fastertransformer_backend {self.backend}, "
            f"patches {', '.join(self.patches) or 'none'}"
        )


def image_pins() -> ImagePins:
    text = asset(GPU_DOCKERFILE).read_text(encoding="utf-8")

    def arg(name: str) -> str:
        found = re.search(rf"^ARG {name}=(\S+)$", text, re.M)
        if found is None:
            raise RuntimeError(f"{GPU_DOCKERFILE} has no ARG {name}")  # a broken install, not user input
        return found.group(1)

    patches = tuple(sorted(n for n in walk("image/patches") if n.endswith(".patch")))
    return ImagePins(arg("TRITON_VERSION"), arg("FT_COMMIT"), arg("FT_BACKEND_COMMIT"), patches)
