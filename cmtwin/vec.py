"""Numbers or arrays: the twin's counts and times are plain numbers for one shape, or numpy arrays with one element
per batch size (or context length) of a vector step (cmtwin.twin.step.decode_steps). These helpers keep one code
path for both: on numbers they are Python's own (max, min, round, math.sqrt), so a single step computes exactly the
floats it always did; on arrays numpy's, element by element the same floats."""

from __future__ import annotations

import math

import numpy as np


class Ragged(Exception):
    """A branch of the model goes different ways for the elements of a vector step (the caller steps them apart)."""


def vmax(a, b):
    return np.maximum(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else max(a, b)


def vmin(a, b):
    return np.minimum(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else min(a, b)


def vround(x):
    """Python's round (half to even, an int) or np.rint (half to even)."""
    return np.rint(x) if isinstance(x, np.ndarray) else round(x)


def vceil(x):
    """math.ceil (an int) or np.ceil."""
    return np.ceil(x) if isinstance(x, np.ndarray) else math.ceil(x)


def vsqrt(x):
    return np.sqrt(x) if isinstance(x, np.ndarray) else math.sqrt(x)


def where(cond, a, b):
    """a where cond, else b: a plain conditional for a number, np.where for an array."""
    return np.where(cond, a, b) if isinstance(cond, np.ndarray) else (a if cond else b)


def every(cond) -> bool:
    """Whether cond holds, for a number or for all of an array's elements; Ragged when it holds for some only."""
    if not isinstance(cond, np.ndarray):
        return bool(cond)
    if cond.all():
        return True
    if cond.any():
        raise Ragged
    return False


def item(x) -> float:
    """The one number of a figure (a number, or an array of one element)."""
    return float(np.asarray(x).item())
