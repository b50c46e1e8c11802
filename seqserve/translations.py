"""Translation files, the same for `seqserve translate` (a server) and `seqserve predict` on a seq2seq model
(offline: export/seq2seq_predict.py): inputs from the command line or a file with one a line,
and what comes back:

- on stdout, one line per input: the input, a tab, the best output's symbols separated by spaces (and,
  with nbest above 1, a tab and the next one, best first): `phoneme<TAB>F OW N IY M`;
- with --output FILE.jsonl, one JSON object per input: {"input": ..., "hypotheses": [{"output": [symbols],
  "score": ..., "finished": ...}, ...]}; FILE.csv: input,rank,output,score,finished, one row a hypothesis.

Scores are written to 4 decimals: a log-probability's float32 digits past that depend on which rows shared
an onnxruntime call, and the two commands must write the same file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

SCORE_DECIMALS = 4


class Found(Protocol):
    """One hypothesis, as the client's `Hypothesis` and seqserve.vocabularies' `Translation` both hold it."""

    @property
    def output(self) -> tuple[str, ...]: ...
    @property
    def score(self) -> float: ...
    @property
    def finished(self) -> bool: ...


Result = tuple[str, Sequence[Found]]  # an input and its hypotheses, best first


def read_inputs(words: Sequence[str], data: Path | None) -> list[str]:
    """The words given, then the file's lines (blank ones skipped, surrounding spaces stripped)."""
    inputs = list(words)
    if data is not None:
        inputs += [line.strip() for line in Path(data).read_text().splitlines() if line.strip()]
    if not inputs:
        raise ValueError("nothing to translate: give words as arguments or a file of one a line with --data")
    return inputs


def lines(results: Sequence[Result]) -> str:
    return "".join(
        "\t".join([text, *(" ".join(h.output) for h in hypotheses)]) + "\n" for text, hypotheses in results
    )


def _records(results: Sequence[Result]) -> list[dict[str, Any]]:
    return [
        {
            "input": text,
            "hypotheses": [
                {"output": list(h.output), "score": round(h.score, SCORE_DECIMALS), "finished": h.finished}
                for h in hypotheses
            ],
        }
        for text, hypotheses in results
    ]


def write(results: Sequence[Result], output: Path | None) -> str:
    """The lines for stdout, or "" once the results are written into `output` (.jsonl or .csv)."""
    if output is None:
        return lines(results)
    if output.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in _records(results))
    else:
        buffer = io.StringIO()
        table = csv.writer(buffer, lineterminator="\n")
        table.writerow(["input", "rank", "output", "score", "finished"])
        for record in _records(results):
            for rank, h in enumerate(record["hypotheses"]):
                table.writerow([record["input"], rank, " ".join(h["output"]), h["score"], h["finished"]])
        text = buffer.getvalue()
    output.write_text(text)
    return ""


def is_seq2seq(repository: Path, model: str, version: int) -> bool:
    """Whether `seqserve predict` is asked for a seq2seq model (anything else, or anything unreadable, is
    left to the predict of the other models, which says what is wrong)."""
    from seqserve import contract

    versions = contract.list_versions(repository, model)
    if not versions or (version and version not in versions):
        return False
    try:
        info = contract.read_model_info(contract.version_dir(repository, model, version or versions[-1]))
    except contract.ContractError:
        return False
    return info.task == contract.SEQ2SEQ
