"""Checks every front door makes on the numbers a client sent, whatever message carried them."""

from __future__ import annotations

import math

import numpy as np

_sum = np.add.reduce  # ndarray.sum without its Python wrapper


def all_finite(x: np.ndarray) -> bool:
    """No NaN or infinity in x. One reduction on the common path: a sum is finite when every value is,
    unless finite values overflow it, and then the exact check decides. (Not `dot`, though it is cheaper
    alone: it lets go of the GIL, and under load the loop then waits ~20 us for another thread to hand it
    back.)"""
    return math.isfinite(_sum(x, axis=None)) or bool(np.isfinite(x).all())
