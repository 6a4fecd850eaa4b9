"""Fuzz the OpenAI-compatible API: a long schemathesis run against its own `/openapi.json`, then
inputs schemathesis does not generate, and what the gateway answered to each kind.

The suite runs a bounded schemathesis run (tests/test_openai_api.py); this one runs as many
examples as asked (most of them to models the gateway serves, fuzz_models.py, so that generation
is fuzzed too, not only the 404 of a model that does not exist), then sends, for every string
field of both request kinds, a lone surrogate, a NUL, a 1 MB string, and bodies nested 10, 1,000
and 100,000 deep. It prints the statuses per kind of input; a 5xx anywhere is a bug.

    .venv/bin/python benchmarks/fuzz_openai.py [--max-examples 1000] [--phases examples,coverage,fuzzing]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from client import TASKS, build
from fuzz_models import MODELS_ENV
from openai_gateway import start_gateway

from ftprefix.gateway.schemas import ChatRequest, CompletionRequest
from ftprefix.serving.server import EmbeddedServer, free_port

KEY = "fuzz-key"
BASES = {
    "/v1/completions": {"model": "base", "prompt": "hello", "max_tokens": 2},
    "/v1/chat/completions": {
        "model": "base",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
    },
}
TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


def _string_fields(kind: type) -> list[str]:
    """Top-level fields that take a string (alone or in a union)."""
    schema = kind.model_json_schema()
    fields = []
    for name, prop in schema["properties"].items():
        options = prop.get("anyOf", [prop])
        if any(o.get("type") == "string" for o in options):
            fields.append(name)
    return fields


def hooks_env(models: list[str]) -> dict[str, str]:
    """schemathesis's environment with fuzz_models.py's hooks, which send requests to `models`."""
    here = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "fuzz_models",
        "PYTHONPATH": path,
        MODELS_ENV: ",".join(models),
    }


def handmade(path: str) -> list[tuple[str, bytes]]:
    base = BASES[path]
    kind = CompletionRequest if path == "/v1/completions" else ChatRequest
    cases = []
    for field in _string_fields(kind):
        for label, text in (
            ("lone surrogate", "a\\ud800b"),
            ("NUL", "a\\u0000b"),
            ("1 MB string", "x" * 1_000_000),
        ):
            body = json.dumps({**base, field: "PLACEHOLDER"}).replace('"PLACEHOLDER"', f'"{text}"')
            cases.append((f"{label} in {field}", body.encode()))
    if path == "/v1/chat/completions":
        for label, text in (
            ("lone surrogate", "\\udfff"),
            ("NUL", "\\u0000"),
            ("1 MB string", "y" * 1_000_000),
        ):
            body = json.dumps(base).replace('"hi"', f'"{text}"')
            cases.append((f"{label} in messages.0.content", body.encode()))
    for depth in (10, 1_000, 100_000):
        nested = "[" * depth + "]" * depth
        cases.append(
            (f"nested {depth} deep", json.dumps({**base, "user": "x"}).replace('"x"', nested).encode())
        )
        cases.append((f"a body nested {depth} deep", nested.encode()))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-examples", type=int, default=1000, help="schemathesis examples per operation")
    parser.add_argument(
        "--phases", default="examples,coverage,fuzzing", help="schemathesis's phases (its --phases)"
    )
    args = parser.parse_args()
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        raise SystemExit("schemathesis (st) is not installed: it is one of the dev extra's packages")
    with tempfile.TemporaryDirectory(prefix="ftprefix-fuzz-") as tmp:
        hf_dir, ft_dir = build(Path(tmp))
        (Path(tmp) / "chat.jinja").write_text(TEMPLATE)
        with EmbeddedServer(ft_dir, streaming=True, stop_timeout=0) as server:
            port = free_port()
            gateway = start_gateway(
                server.grpc_url,
                hf_dir,
                port,
                "--api-key",
                KEY,
                "--chat-template",
                str(Path(tmp) / "chat.jinja"),
            )
            url = f"http://127.0.0.1:{port}"
            try:
                checks = (
                    "not_a_server_error,status_code_conformance,content_type_conformance,"
                    "response_schema_conformance,response_headers_conformance,negative_data_rejection,"
                    "ignored_auth,unsupported_method"
                )
                argv = [st, "run", url + "/openapi.json", "--checks", checks]
                argv += ["--header", f"Authorization: Bearer {KEY}", "--max-examples", str(args.max_examples)]
                argv += ["--phases", args.phases, "--workers", "2"]
                run = subprocess.run(
                    argv, capture_output=True, text=True, cwd=tmp, env=hooks_env(["base", *TASKS])
                )
                summary = [line for line in run.stdout.splitlines() if "generated" in line or "❌" in line]
                print(
                    f"schemathesis, up to {args.max_examples} examples per operation: exit {run.returncode}"
                )
                print("\n".join(f"  {line.strip()}" for line in summary))
                if run.returncode != 0:
                    print(run.stdout[-4000:])
                statuses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
                with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {KEY}"}) as http:
                    for path in BASES:
                        for label, body in handmade(path):
                            for stream in (False, True):
                                content = body
                                if stream and body.startswith(b"{"):
                                    content = body[:-1] + b', "stream": true}'
                                answer = http.post(
                                    url + path, content=content, headers={"Content-Type": "application/json"}
                                )
                                kind = label.split(" in ")[0]
                                statuses[kind][answer.status_code] += 1
            finally:
                gateway.terminate()
                gateway.wait()
    print()
    print("| input | requests | statuses |")
    print("|---|---|---|")
    for kind, counter in statuses.items():
        seen = ", ".join(f"{status}: {count}" for status, count in sorted(counter.items()))
        print(f"| {kind} | {sum(counter.values())} | {seen} |")
    server_errors = sum(
        count for counter in statuses.values() for status, count in counter.items() if status >= 500
    )
    print(f"\n5xx answers to the handmade inputs: {server_errors}")


if __name__ == "__main__":
    main()
