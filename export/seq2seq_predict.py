"""`seqserve predict` on a seq2seq version: its two graphs in this process with onnxruntime (`OnnxSeq2Seq`,
no server, no torch) and the search the server runs, written as `seqserve translate` writes its answers
(seqserve/translations.py), so the two files can be compared line for line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from seqserve import contract, translations
from seqserve.beam_search import SearchOptions
from seqserve.export.seq2seq_decode import OnnxSeq2Seq
from seqserve.predictions import check_output


def predict_command(
    repository: Path,
    model: str,
    version: int,
    words: Sequence[str],
    data: Path | None,
    output: Path | None,
    force: bool,
    beam: int,
    nbest: int,
    max_steps: int,
    length_penalty: float,
) -> str:
    """The lines for stdout, or "" once the translations are written into `output`."""
    output = check_output(output, force)
    versions = contract.list_versions(repository, model)
    decoder = OnnxSeq2Seq.from_version(contract.version_dir(repository, model, version or versions[-1]))
    # Width 1 makes greedy search's choices (seqserve/beam_search.py), as the server's width 1 does.
    options = SearchOptions(beam, nbest, max_steps or None, length_penalty)
    inputs = translations.read_inputs(words, data)
    found = decoder.translate(inputs, options)
    return translations.write(list(zip(inputs, found, strict=True)), output)
