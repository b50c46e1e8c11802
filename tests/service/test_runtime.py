"""onnxruntime sessions: the execution provider asked for, and the fallback when CUDA is absent."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from seqserve.contract import MODEL_FILE, read_model_info, version_dir
from seqserve.service.engine import runtime as runtime_module
from seqserve.service.engine.runtime import CPU, CUDA, ModelRuntime, providers_for


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="CUDA is present: no fallback to see")
def test_cuda_asked_for_and_absent_falls_back_to_cpu_with_one_warning(
    model_repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime_module._warn_no_cuda.cache_clear()  # another test may have seen the condition already
    with caplog.at_level(logging.WARNING, logger="seqserve.service.engine.runtime"):
        assert providers_for("cuda") == [CPU]
        runtimes = [
            ModelRuntime(read_model_info(path), path / MODEL_FILE, "cuda", threads=1)
            for path in (version_dir(model_repository, name, 1) for name in ("jv-gru", "jv-lstm"))
        ]
    assert [runtime.provider for runtime in runtimes] == [CPU, CPU]
    # One condition, one warning, however many versions are loaded.
    assert caplog.text.count("--device cuda asked for") == 1


def test_zero_state_is_shared_and_read_only(model_repository: Path) -> None:
    path = version_dir(model_repository, "jv-lstm", 1)
    runtime = ModelRuntime(read_model_info(path), path / MODEL_FILE, "cpu", threads=1)
    h, c = runtime.zero_state
    assert h.shape == (runtime.info.layers, runtime.info.hidden) and not h.any() and not c.flags.writeable
    outputs, (hn, cn) = runtime.run(
        (np.ones((2, 5, 12), np.float32),), tuple(np.stack([s, s], axis=1) for s in runtime.zero_state),
        np.array([5, 2], np.int32),
    )  # fmt: skip
    logits = outputs["logits"]
    assert logits.shape == (2, runtime.info.classes) and hn.shape == cn.shape == (1, 2, runtime.info.hidden)
