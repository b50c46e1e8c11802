"""Shared session fixtures: small real models trained once per test session and exported under the contract.

`trained_runs` trains the runs in `FIXTURE_RUNS` (about 12 s on 2 cores; accuracy is real but short of the
targets) and `model_repository` exports each of them as version 1, fp32. Both are session-wide and shared
by every test: treat them as read-only, and ask for `writable_repository` to get a private copy to change.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# name -> `seqserve train` flags. Small and few epochs so the whole suite stays fast on 2 cores.
FIXTURE_RUNS: dict[str, dict] = {
    "jv-gru": {"dataset": "japanese_vowels", "cell": "gru", "epochs": 15},
    "jv-lstm": {"dataset": "japanese_vowels", "cell": "lstm", "epochs": 15},
    "jv-bigru": {"dataset": "japanese_vowels", "cell": "gru", "bidirectional": True, "epochs": 15},
    "bms-gru": {"dataset": "basic_motions_stream", "cell": "gru", "epochs": 10, "lr": 1e-2},
}
FIXTURE_HIDDEN = 32


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> run folder (checkpoint.pt, metrics.json, plots) for every entry of FIXTURE_RUNS."""
    import torch

    from seqserve.training.loop import TrainConfig, train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for name, flags in FIXTURE_RUNS.items():
        result = train(TrainConfig(out=root / name, hidden=FIXTURE_HIDDEN, seed=0, **flags), progress=False)
        runs[name] = Path(result.run_dir)
    return runs


@pytest.fixture(scope="session")
def model_repository(trained_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding every trained run as `<name>/1/` (fp32), exported with parity checked."""
    from seqserve.export.job import export_run

    repository = tmp_path_factory.mktemp("model_repository")
    for run_dir in trained_runs.values():
        export_run(run_dir, repository)
    return repository


@pytest.fixture
def writable_repository(model_repository: Path, tmp_path: Path) -> Path:
    """A private copy of `model_repository` that a test may change."""
    return Path(shutil.copytree(model_repository, tmp_path / "model_repository"))
