"""The two ways an export ends badly: the user's input is wrong, or one model did not pass its checks."""

from __future__ import annotations


class ExportInputError(ValueError):
    """Bad input (a run folder, a checkpoint, the repository, a flag): nothing is written, exit code 2."""


class ExportError(RuntimeError):
    """A model failed (parity, quantized accuracy, checker): that model is not written, the others go on."""
