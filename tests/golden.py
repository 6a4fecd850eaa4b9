"""Answers recorded from real FasterTransformer on an H100 (tests/data/ft-golden, see its README):
the specification the CPU twin and the client are held to. Helpers only, no tests here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

from ftprefix import layout, protocol
from ftprefix.cli import main
from ftprefix.words import batch_words_to_ft

GOLDEN = Path(__file__).resolve().parent / "data" / "ft-golden"
MODELS = {"g1_fp32_sequential": "fp32", "g2_fp16_parallel": "fp16"}
TASK_NAMES = ("alpha", "beta")  # ids 0 and 1, the order they were converted in


@dataclass(frozen=True)
class Scenario:
    model: str
    raw: dict

    @property
    def name(self) -> str:
        return str(self.raw["name"])

    @property
    def rows(self) -> list[dict]:
        return list(self.raw["rows"])

    @property
    def width(self) -> int:
        return max(len(r["ids"]) for r in self.rows)

    def ft_generated(self, b: int) -> list[int]:
        """Row b's generated tokens as FT returned them: after its own input, sequence_length - W of them."""
        n = len(self.rows[b]["ids"])
        count = self.raw["ft_sequence_length"][b] - self.width
        return self.raw["ft_output_ids"][b][n : n + count]

    def expected(self, b: int) -> list[int]:
        """What a client asking for request_output_len tokens must see: FT's tokens, trimmed."""
        return self.ft_generated(b)[: self.rows[b]["request_output_len"]]

    def task(self, b: int) -> str | None:
        return TASK_NAMES[self.rows[b]["task"]] if self.raw["use_tasks"] else None

    def arrays(self) -> dict[str, np.ndarray]:
        """The request exactly as recorded: rows padded with 0, greedy (runtime_top_k 1)."""
        rows, s = self.rows, self.raw
        ids = np.zeros((len(rows), self.width), dtype=np.uint32)
        for b, r in enumerate(rows):
            ids[b, : len(r["ids"])] = r["ids"]
        column = {t.name: t.column for t in protocol.FT_INPUTS}
        arrays = {
            protocol.INPUT_IDS: ids,
            protocol.INPUT_LENGTHS: column[protocol.INPUT_LENGTHS]([len(r["ids"]) for r in rows]),
            protocol.REQUEST_OUTPUT_LEN: column[protocol.REQUEST_OUTPUT_LEN](
                [r["request_output_len"] for r in rows]
            ),
            protocol.RUNTIME_TOP_K: column[protocol.RUNTIME_TOP_K]([1] * len(rows)),
            protocol.END_ID: column[protocol.END_ID]([s["end_id"]] * len(rows)),
            protocol.REPETITION_PENALTY: column[protocol.REPETITION_PENALTY](
                [s["repetition_penalty"]] * len(rows)
            ),
        }
        if s["use_tasks"]:
            arrays[protocol.TASK_IDS] = column[protocol.TASK_IDS]([r["task"] for r in rows])
        if s["stop_words"]:
            arrays[protocol.STOP_WORDS_LIST] = batch_words_to_ft([[s["stop_words"]]] * len(rows))
        if s["bad_words"]:
            arrays[protocol.BAD_WORDS_LIST] = batch_words_to_ft([[s["bad_words"]]] * len(rows))
        return arrays

    def inputs(self) -> list[grpcclient.InferInput]:
        out = []
        for name, arr in self.arrays().items():
            item = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            item.set_data_from_numpy(arr)
            out.append(item)
        return out


def scenarios(model: str) -> list[Scenario]:
    data = json.loads((GOLDEN / model / "golden.json").read_text())
    return [Scenario(model, s) for s in data["scenarios"]]


def all_scenarios() -> list[Scenario]:
    return [s for model in MODELS for s in scenarios(model)]


def convert(model: str, out: Path) -> Path:
    """`ftprefix convert` exactly as the golden README says; returns the <tp>-gpu directory."""
    src = GOLDEN / model
    prefixes = ",".join(f"{name}={src / name}.ckpt" for name in TASK_NAMES)
    argv = ["convert", "--model", str(src / "hf"), "--prefix", prefixes, "--tp", "1"]
    assert main([*argv, "--dtype", MODELS[model], "--out", str(out)]) == 0
    return layout.ft_dir(out, 1)
