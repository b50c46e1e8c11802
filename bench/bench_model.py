"""The models the bench runs: a JapaneseVowels-shaped GRU (every stream scenario) and a character language
model of the README's Shakespeare GRU's shape (the generation rows), each exported into a fresh repository.

Their weights are seeded random, not trained: speed does not depend on them, and building one takes seconds
where training takes minutes (the README's language model about ten). They go through the real exporter
(parity on the data set's test split), so they are exactly what users serve.
"""

from __future__ import annotations

import logging
from pathlib import Path

from seqserve.contract import MODEL_FILE, ModelInfo, read_model_info, version_dir

logger = logging.getLogger(__name__)

BENCH_MODEL = "bench-gru"
BENCH_VERSION = 1
# JapaneseVowels: 12 LPC features, 9 speakers; the bench fixes hidden 128 and 2 layers.
FEATURES = 12
CLASSES = 9
HIDDEN = 128
LAYERS = 2


def write_bench_model(
    repository: Path,
    work_dir: Path,
    seed: int = 0,
    name: str = BENCH_MODEL,
    hidden: int = HIDDEN,
    layers: int = LAYERS,
) -> ModelInfo:
    """Export a seeded GRU (by default the bench GRU) as `<repository>/<name>/1/`; returns its metadata."""
    import torch

    from seqserve.export.job import export_run
    from seqserve.training.model import ModelConfig, SequenceClassifier, checkpoint_payload

    torch.manual_seed(seed)
    config = ModelConfig(
        cell="gru", features=FEATURES, classes=CLASSES, task="many_to_one", hidden=hidden, layers=layers
    )
    model = SequenceClassifier(config).eval()
    run_dir = Path(work_dir) / f"{name}-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    labels = [f"speaker-{index}" for index in range(1, CLASSES + 1)]
    # The exporter proves parity on the data set's test split, so the run names JapaneseVowels.
    data = {"dataset": "japanese_vowels", "seed": seed}
    torch.save(checkpoint_payload(model, labels, extra={"data": data}), run_dir / "checkpoint.pt")
    export_run(run_dir, repository, name=name, version=BENCH_VERSION)
    return read_model_info(version_dir(repository, name, BENCH_VERSION))


BENCH_LM = "bench-lm"
# The README's trained GRU: 1 layer, 384 hidden, embedding 64, the 75 characters of the Shakespeare plays.
LM_HIDDEN = 384
LM_EMBEDDING = 64


def write_bench_language_model(
    repository: Path, work_dir: Path, hidden: int = LM_HIDDEN, seed: int = 0, name: str = BENCH_LM
) -> ModelInfo:
    """Export a seeded GRU character model over the Shakespeare vocabulary as `<repository>/<name>/1/`."""
    import torch

    from seqserve.export.job import export_run
    from seqserve.training.datasets import data_dir
    from seqserve.training.language_model import CharLanguageModel, LanguageModelConfig, checkpoint_payload
    from seqserve.training.text import SHAKESPEARE, load_text

    vocabulary = load_text(data_dir(), SHAKESPEARE).vocabulary
    torch.manual_seed(seed)
    config = LanguageModelConfig(
        cell="gru", vocabulary=len(vocabulary), embedding=LM_EMBEDDING, hidden=hidden
    )
    model = CharLanguageModel(config).eval()
    run_dir = Path(work_dir) / f"{name}-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = checkpoint_payload(model, vocabulary, extra={"data": {"dataset": SHAKESPEARE, "seed": seed}})
    torch.save(payload, run_dir / "checkpoint.pt")
    export_run(run_dir, repository, name=name, version=BENCH_VERSION)
    return read_model_info(version_dir(repository, name, BENCH_VERSION))


def model_path(repository: Path) -> Path:
    return version_dir(repository, BENCH_MODEL, BENCH_VERSION) / MODEL_FILE


def open_session(path: str | Path, device: str, threads: int):
    """An onnxruntime session with the server's settings: `threads` intra-op threads, CUDA EP if asked."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            logger.warning("device cuda asked for, but onnxruntime has no CUDA EP here; running on CPU")
    return ort.InferenceSession(str(path), options, providers=providers)
