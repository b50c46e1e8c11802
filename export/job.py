"""The export job: run folders -> checked ONNX versions in a model repository.

Per run: load the checkpoint and its data set's test split, build the graph, prove parity with PyTorch,
measure accuracy and latency with onnxruntime, optionally quantize to int8 (its own model, `<name>-int8`,
so it never becomes the default of the fp32 model), then write every version atomically. All inputs are
checked before anything is written (`ExportInputError`: nothing written); a model that fails its checks
(`ExportError`) is skipped and the other runs still export.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
import torch

from seqserve import contract
from seqserve.contract import DEFAULT_OPSET, ModelInfo
from seqserve.export import repository as repo
from seqserve.export.errors import ExportError, ExportInputError
from seqserve.export.evaluation import Latency, compare_latency, measure_latency, predict
from seqserve.export.graph import build_model, set_metadata
from seqserve.export.inference import OnnxClassifier
from seqserve.export.parity import check_batch_invariance, check_parity, select_sequences
from seqserve.export.quantize import (
    INT8_MAX_ACCURACY_DROP,
    check_quantize,
    int8_name,
    int8_op_types,
    quantize_int8,
    quantized_ops,
)
from seqserve.export.runs import read_metrics
from seqserve.training.datasets import DatasetSplits, load_dataset, with_task
from seqserve.training.language_model import CharLanguageModel
from seqserve.training.loop import CHECKPOINT_FILE
from seqserve.training.model import SequenceClassifier, load_checkpoint

log = logging.getLogger(__name__)

# Parity runs PyTorch and onnxruntime per sequence; this many test sequences, spread over the split, suffice.
PARITY_SEQUENCES = 64
# What model.json keeps of the run's metrics.json: its test figures (PyTorch, before export).
_RUN_TEST_KEYS = ("test_accuracy", "accuracy_unit", "per_class", "confusion_matrix", "sizes")
# A language model's run figures (nats and bits per character, beside its baselines) instead.
_RUN_TEXT_KEYS = (
    "validation",
    "test",
    "baselines",
    "characters",
    "train_seconds",
    "train_cpu_seconds",
    "steps",
)


@dataclass
class ExportPlan:
    """One run, checked and loaded, with the versions it will write; nothing is on disk yet."""

    run_dir: Path
    repository: Path
    model: SequenceClassifier | CharLanguageModel
    splits: DatasetSplits
    info: ModelInfo  # the fp32 version
    int8_info: ModelInfo | None  # the int8 model (`<name>-int8`), when asked
    run_metrics: dict[str, Any]
    force: bool


@dataclass
class ExportResult:
    """One written version."""

    run_dir: Path
    path: Path  # <repo>/<name>/<version>
    info: ModelInfo
    accuracy: float  # onnxruntime on the whole test split, this very file
    latency: Latency


@dataclass
class RunOutcome:
    """What happened to one run of a batch export: its written versions, or why it failed."""

    run_dir: Path
    name: str
    results: list[ExportResult] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _load_run(run_dir: Path) -> tuple[SequenceClassifier | CharLanguageModel, dict[str, Any]]:
    if not run_dir.is_dir():
        raise ExportInputError(f"run folder {run_dir} does not exist or is not a folder")
    checkpoint = run_dir / CHECKPOINT_FILE
    if not checkpoint.is_file():
        raise ExportInputError(f"{checkpoint}: missing; expected a run folder written by `seqserve train`")
    if not zipfile.is_zipfile(checkpoint):
        # torch.save writes a zip archive; anything else is truncated, corrupt or another tool's file.
        raise ExportInputError(
            f"{checkpoint}: not a readable seqserve checkpoint (corrupt, truncated or not torch)"
        )
    try:
        model, payload = load_checkpoint(str(checkpoint))
    except pickle.UnpicklingError as exc:
        raise ExportInputError(
            f"{checkpoint}: not a readable seqserve checkpoint (it holds pickled Python objects, expected a "
            "state dict and plain config that load with weights_only=True)"
        ) from exc
    except ValueError as exc:
        raise ExportInputError(str(exc)) from exc
    except Exception as exc:  # torch.load and load_state_dict raise many types for one cause: a bad file
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportInputError(
            f"{checkpoint}: not a readable seqserve checkpoint ({type(exc).__name__}: {first_line[:200]})"
        ) from exc
    labels = payload.get("labels", [])
    if len(labels) != model.config.classes:
        raise ExportInputError(
            f"{checkpoint}: has {len(labels)} labels, its model has {model.config.classes} classes"
        )
    if not isinstance(payload.get("data"), dict):
        raise ExportInputError(
            f"{checkpoint}: no 'data' entry naming its data set; parity needs the test split"
        )
    return model, payload


def _load_splits(
    checkpoint: Path, model: SequenceClassifier | CharLanguageModel, data: dict[str, Any]
) -> DatasetSplits:
    try:
        splits = with_task(load_dataset(**data), model.config.task)
    except (ValueError, OSError, TypeError) as exc:
        raise ExportInputError(f"{checkpoint}: its data set {data} cannot be loaded: {exc}") from exc
    if splits.features != model.config.features:
        raise ExportInputError(
            f"{checkpoint}: data set {splits.name} has {splits.features} features, the model expects "
            f"{model.config.features}"
        )
    if not splits.test.sequences:
        raise ExportInputError(
            f"{checkpoint}: data set {splits.name} has no test sequences to check parity on"
        )
    return splits


def _load_run_metrics(run_dir: Path) -> dict[str, Any]:
    metrics = read_metrics(run_dir)
    keys = _RUN_TEXT_KEYS if metrics.get("task") == contract.LANGUAGE_MODEL else _RUN_TEST_KEYS
    return {key: metrics[key] for key in keys if key in metrics}


def _check_opset(opset: int) -> int:
    newest = onnx.defs.onnx_opset_version()
    if not contract.MIN_OPSET <= opset <= newest:
        raise ExportInputError(f"--opset {opset} is not supported; expected {contract.MIN_OPSET} to {newest}")
    return opset


def plan_export(
    run_dir: Path,
    repository: Path,
    name: str | None = None,
    version: int | None = None,
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
) -> ExportPlan:
    """Check one run's inputs and load what its export needs; raises ExportInputError, writes nothing."""
    run_dir, repository = Path(run_dir), repo.check_repository(Path(repository))
    check_quantize(quantize)
    _check_opset(opset)
    name = name if name is not None else run_dir.resolve().name
    try:
        contract.check_model_name(name)
    except contract.ContractError as exc:
        raise ExportInputError(str(exc)) from exc
    if version is not None and version < 1:
        raise ExportInputError(f"--version {version} is not valid; expected a number >= 1")
    model, payload = _load_run(run_dir)
    splits = _load_splits(run_dir / CHECKPOINT_FILE, model, payload["data"])
    run_metrics = _load_run_metrics(run_dir)
    if quantize == "int8":
        try:
            contract.check_model_name(int8_name(name))
        except contract.ContractError as exc:
            raise ExportInputError(f"int8 model name: {exc}") from exc
    targets = [name] + ([int8_name(name)] if quantize == "int8" else [])
    versions = {n: version if version is not None else repo.next_version(repository, n) for n in targets}
    for target, number in versions.items():
        repo.check_version_free(repository, target, number, force)
    version = versions[name]
    config = model.config
    try:
        info = ModelInfo(
            name=name,
            version=version,
            task=config.task,
            cell=config.cell,
            layers=config.layers,
            hidden=config.hidden,
            bidirectional=config.bidirectional,
            features=config.features,
            labels=[str(label) for label in payload["labels"]],
            opset=opset,
            precision="fp32",
            vocabulary=list(payload.get("vocabulary", [])),
        )
    except contract.ContractError as exc:
        raise ExportInputError(f"{run_dir / CHECKPOINT_FILE}: {exc}") from exc
    int8_info = None
    if quantize == "int8":
        int8_info = replace(info, name=int8_name(name), version=versions[int8_name(name)], precision="int8")
    return ExportPlan(run_dir, repository, model, splits, info, int8_info, run_metrics, force)


def _measure(
    onnx_model: onnx.ModelProto, info: ModelInfo, splits: DatasetSplits
) -> tuple[OnnxClassifier, float, Latency]:
    session = OnnxClassifier(onnx_model.SerializeToString(), info)
    accuracy = predict(session, splits.test.sequences).accuracy(splits.test.targets)
    return session, accuracy, measure_latency(session, splits.test.sequences)


def _int8_version(
    plan: ExportPlan,
    planned: ModelInfo,
    fp32_model: onnx.ModelProto,
    fp32_session: OnnxClassifier,
    fp32_accuracy: float,
    on_step: StepCallback,
) -> tuple[onnx.ModelProto, ModelInfo, float, Latency]:
    info = replace(planned)
    model = quantize_int8(fp32_model, info, plan.splits.train.sequences)
    on_step(f"{info.name}: calibrated on the training split")
    session = OnnxClassifier(model.SerializeToString(), info)
    sequences = plan.splits.test.sequences
    accuracy = predict(session, sequences).accuracy(plan.splits.test.targets)
    drop = fp32_accuracy - accuracy
    if drop > INT8_MAX_ACCURACY_DROP:
        raise ExportError(
            f"{info.name}: int8 test accuracy {accuracy:.4f} is {drop * 100:.2f} points below fp32 "
            f"{fp32_accuracy:.4f}; at most {INT8_MAX_ACCURACY_DROP * 100:.0f} point allowed"
        )
    checked = select_sequences(sequences, PARITY_SEQUENCES)
    # The promise static scales make: a row's answer is the same alone, in any batch, in any chunks.
    invariance = check_batch_invariance(session, checked)
    if not invariance.passed:
        raise ExportError(
            f"{info.name}: int8 answers depend on the batch or on chunking: max abs diff "
            f"{invariance.max_abs_diff:.3e} > {invariance.tolerance:.0e} ({invariance.describe()})"
        )
    with torch.no_grad():
        error = check_parity(plan.model, session, checked)  # quantization error: recorded, not gated
    # Timed in alternating passes in this same run, so the ratio holds on a busy machine.
    fp32_latency, latency = compare_latency(fp32_session, session, sequences)
    info.parity = {
        "reference": f"{plan.info.name} version {plan.info.version} (fp32)",
        "prediction_agreement": predict(session, sequences).agreement(predict(fp32_session, sequences)),
        "batch_invariance": invariance.to_dict(),
        "vs_pytorch": {"whole": error.whole, "batch": error.batch, "chunked": error.chunked},
    }
    info.test_metrics = {
        "onnx_accuracy": accuracy,
        "accuracy_unit": plan.run_metrics.get("accuracy_unit", _accuracy_unit(plan.info)),
        "fp32_onnx_accuracy": fp32_accuracy,
        "accuracy_drop": drop,
        "latency_ms": latency.to_dict(),
        "fp32_latency_ms": fp32_latency.to_dict(),
        "speedup": {
            "single": fp32_latency.single_ms / latency.single_ms,
            "batch": fp32_latency.batch_ms / latency.batch_ms,
        },
        "quantized_ops": quantized_ops(model),
        "int8_op_types": int8_op_types(model),
        "calibration": "static, MinMax over the training split",
    }
    set_metadata(model, info)
    on_step(f"{info.name}: batch invariance, accuracy and speed checked")
    return model, info, accuracy, latency


def _accuracy_unit(info: ModelInfo) -> str:
    if info.is_language_model:
        return "next character"
    return "step" if info.task == "many_to_many" else "sequence"


StepCallback = Callable[[str], None]


def steps_of(plan: ExportPlan) -> int:
    """How many times `execute` calls its `on_step`: the progress bar's length."""
    return 3 + (2 if plan.int8_info is not None else 0)


def _no_step(label: str) -> None:
    return None


def execute(plan: ExportPlan, on_step: StepCallback = _no_step) -> list[ExportResult]:
    """Build, check, measure and write the plan's versions; raises ExportError if any check fails.
    `on_step(label)` is called after each of the `steps_of(plan)` steps."""
    info = replace(plan.info)
    try:
        fp32_model = build_model(plan.model, info, info.opset)
    except (onnx.checker.ValidationError, contract.ContractError) as exc:
        raise ExportError(f"{info.name}: the ONNX graph fails its check: {exc}") from exc
    with torch.no_grad():
        session, accuracy, latency = _measure(fp32_model, info, plan.splits)
        on_step(f"{info.name}: graph built, accuracy and latency measured")
        parity = check_parity(
            plan.model, session, select_sequences(plan.splits.test.sequences, PARITY_SEQUENCES)
        )
    log.info("%s parity with PyTorch: %s", info.name, parity.describe())
    if not parity.passed:
        raise ExportError(
            f"{info.name}: parity with PyTorch failed: max abs diff {parity.max_abs_diff:.3e} > tolerance "
            f"{parity.tolerance:.0e} ({parity.describe()})"
        )
    info.parity = parity.to_dict()
    info.test_metrics = {
        **plan.run_metrics,
        "onnx_accuracy": accuracy,
        "accuracy_unit": plan.run_metrics.get("accuracy_unit", _accuracy_unit(info)),
        "latency_ms": latency.to_dict(),
    }
    set_metadata(fp32_model, info)
    on_step(f"{info.name}: parity with PyTorch {parity.max_abs_diff:.1e}")
    versions = [repo.VersionFiles(fp32_model, info)]
    measured = [(accuracy, latency)]
    if plan.int8_info is not None:
        int8_model, int8_info, int8_accuracy, int8_latency = _int8_version(
            plan, plan.int8_info, fp32_model, session, accuracy, on_step
        )
        # fp32 keeps the figures timed side by side with int8, so both model.json files tell one story.
        latency = Latency(**int8_info.test_metrics["fp32_latency_ms"])
        info.test_metrics["latency_ms"] = latency.to_dict()
        set_metadata(fp32_model, info)
        measured = [(accuracy, latency), (int8_accuracy, int8_latency)]
        versions.append(repo.VersionFiles(int8_model, int8_info))
    written = repo.write_versions(plan.repository, versions, force=plan.force)
    on_step(f"{info.name}: written")
    return [
        ExportResult(plan.run_dir, path, written_info, acc, lat)
        for (path, written_info), (acc, lat) in zip(written, measured, strict=True)
    ]


def export_run(
    run_dir: Path,
    repository: Path,
    name: str | None = None,
    version: int | None = None,
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
) -> list[ExportResult]:
    """Export one run folder; returns one result per written version (fp32, then int8 if asked)."""
    return execute(plan_export(run_dir, repository, name, version, quantize, opset, force))


def export_runs(
    runs: list[Path],
    repository: Path,
    name: str | None = None,
    version: int | None = None,
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    on_outcome: Callable[[RunOutcome], None] | None = None,
    on_plans: Callable[[list[ExportPlan]], StepCallback] | None = None,
) -> list[RunOutcome]:
    """Export many runs: every input is checked first (ExportInputError: nothing written), then each run is
    exported on its own; a failed model is reported in its outcome and the others go on."""
    if not runs:
        raise ExportInputError("no run folders given")
    if name is not None and len(runs) > 1:
        raise ExportInputError(
            f"--name {name} given with {len(runs)} run folders; it names one run, leave it out"
        )
    plans = [plan_export(run, repository, name, version, quantize, opset, force) for run in runs]
    names = [p.info.name for p in plans] + [p.int8_info.name for p in plans if p.int8_info is not None]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ExportInputError(
            f"several run folders would export as model {', '.join(duplicated)}; rename them"
        )
    on_step = on_plans(plans) if on_plans is not None else _no_step
    outcomes = []
    for plan in plans:
        outcome = RunOutcome(plan.run_dir, plan.info.name)
        try:
            outcome.results = execute(plan, on_step)
        except Exception as exc:  # one model's failure, whatever its kind, must not stop the others
            log.debug("export of %s failed", plan.run_dir, exc_info=True)
            # ExportError messages start with the model's name; anything else gets it here.
            outcome.error = (
                str(exc) if isinstance(exc, ExportError) else f"{outcome.name}: {type(exc).__name__}: {exc}"
            )
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes
