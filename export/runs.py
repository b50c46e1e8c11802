"""A run folder as the exporter reads it: which kind of model its checkpoint holds, and which version of
the repository it is to become."""

from __future__ import annotations

from pathlib import Path

import torch

from seqserve import contract
from seqserve.export import repository as repo
from seqserve.training.loop import CHECKPOINT_FILE


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
