"""Which optional part of ftprefix needs which packages, and the one-line error when they are missing.

`pip install ftprefix` is the client alone; `ftprefix[convert]`, `[verify]`, `[serve]`, `[openai]`
and `[all]` add the rest (pyproject.toml). Commands call `require` before importing heavy modules.
"""

from __future__ import annotations

import importlib.util

from ftprefix.errors import UserError

# extra -> the import names it provides
EXTRAS: dict[str, tuple[str, ...]] = {
    "convert": ("torch", "transformers", "tqdm"),
    "verify": ("torch", "transformers"),
    "serve": ("torch", "transformers", "pytriton"),
    "openai": ("fastapi", "uvicorn", "jinja2", "prometheus_client"),
}


def require(*extras: str) -> None:
    """Raise UserError naming the first extra whose packages are not installed."""
    for extra in extras:
        missing = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
        if missing:
            raise UserError(
                f"this needs ftprefix's '{extra}' extra ({', '.join(missing)} not installed): "
                f"pip install 'ftprefix[{extra}]'"
            )
