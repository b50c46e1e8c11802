"""A run folder as the exporter reads it: which kind of model its checkpoint holds, and which version of
the repository it is to become."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from seqserve import contract
from seqserve.export import repository as repo
from seqserve.export.errors import ExportError, ExportInputError
from seqserve.training.loop import CHECKPOINT_FILE, METRICS_FILE

log = logging.getLogger(__name__)
T = TypeVar("T")


def checkpoint_kind(run_dir: Path) -> str | None:
    """The checkpoint's `kind` ("forecast", "seq2seq", ...); None when it names none or cannot be read
    (the export of classifiers, which takes those, then says what is wrong)."""
    try:
        payload = torch.load(Path(run_dir) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is the classifiers' export to report
        return None
    return payload.get("kind") if isinstance(payload, dict) else None


def claim_version(
    run_dir: Path, repository: Path, name: str | None, version: int | None, force: bool
) -> tuple[Path, str, int]:
    """The repository (checked), the model's name (the run folder's unless given) and its version (the
    next free one unless given), refused when that version exists and `force` is not set."""
    repository = repo.check_repository(Path(repository))
    name = contract.check_model_name(name or Path(run_dir).resolve().name)
    version = version or repo.next_version(repository, name)
    repo.check_version_free(repository, name, version, force)
    return repository, name, version


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's metrics.json ({} when it has none, with a warning); anything but a JSON object refused."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        log.warning("%s: missing; model.json will have no training test metrics", path)
        return {}
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportInputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(metrics, dict):
        raise ExportInputError(f"{path}: expected a JSON object, got {type(metrics).__name__}")
    return metrics


def checked_parity(
    run_dir: Path, name: str, parity_data: Callable[[], T], check: Callable[[T], dict[str, Any]]
) -> dict[str, Any]:
    """`check` on the run's own data (`parity_data`, which may not load: the run's data reference is
    stale), refused unless it passed."""
    try:
        data = parity_data()
    except (ValueError, OSError, KeyError) as exc:
        raise ExportInputError(f"{run_dir}: its data cannot be loaded for parity: {exc}") from exc
    parity = check(data)
    if not parity["passed"]:
        raise ExportError(f"{name}: parity with PyTorch failed: {parity}")
    return parity
