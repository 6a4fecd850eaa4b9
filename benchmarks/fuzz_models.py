"""schemathesis hooks (`SCHEMATHESIS_HOOKS=fuzz_models`, this directory on PYTHONPATH) that send
most generated requests to models the gateway serves.

The schema allows any non-empty `model` (which models exist is the server's state, and a tenant's
keys decide which it may see, so `/openapi.json` does not list them): left alone, nearly every
valid request schemathesis makes is a 404 before tokenising, and generation is never fuzzed. A
valid name is replaced by one of FTPREFIX_FUZZ_MODELS (comma-separated) or kept, as hypothesis
draws; an invalid one (empty, not Unicode) is kept, so a request meant to be refused stays so.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from hypothesis import strategies as st

MODELS_ENV = "FTPREFIX_FUZZ_MODELS"
MODELS = [name for name in os.environ.get(MODELS_ENV, "").split(",") if name]


def _valid_name(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: the request is meant to be refused
        return False
    return True


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy:
    if MODELS and isinstance(body, dict) and _valid_name(body.get("model")):
        return st.sampled_from([*MODELS, body["model"]]).map(lambda name: {**body, "model": name})
    return st.just(body)
