"""Numbers or arrays: the twin's counts and times are plain numbers for one shape, or numpy arrays with one element
per batch size (or context length) of a vector step (cmtwin.twin.step.decode_steps). These helpers keep one code
path for both: on numbers they are Python's own (max, min, round, math.sqrt), so a single step computes exactly the
floats it always did; on arrays numpy's, element by element the same floats.

numpy is imported when an array first needs it: a process that only steps single shapes (`cmtwin plan`) never
imports it (about a seventh of that command's start), and nothing can be an array before numpy is imported."""

from __future__ import annotations

import math
import sys


def is_array(x) -> bool:
    """Whether x is a numpy array (False, without importing numpy, where numpy was never imported)."""
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.ndarray)


def numpy():
    """The numpy module (imported on first use)."""
    import numpy as np

    return np


def ndim(x) -> int:
    """np.ndim(x): 0 for a number, an array's dimensions, a list's or tuple's nesting."""
    if is_array(x):
        return x.ndim
    return numpy().ndim(x) if isinstance(x, (list, tuple)) else 0


def any_of(x) -> bool:
    """Whether x holds (a number), or holds for some element (an array)."""
    return bool(x.any()) if is_array(x) else bool(x)


def all_of(x) -> bool:
    """Whether x holds (a number), or holds for every element (an array)."""
    return bool(x.all()) if is_array(x) else bool(x)


class Ragged(Exception):
    """A branch of the model goes different ways for the elements of a vector step (the caller steps them apart)."""


def vmax(a, b):
    return numpy().maximum(a, b) if is_array(a) or is_array(b) else max(a, b)


def vmin(a, b):
    return numpy().minimum(a, b) if is_array(a) or is_array(b) else min(a, b)


def vround(x):
    """Python's round (half to even, an int) or np.rint (half to even)."""
    return numpy().rint(x) if is_array(x) else round(x)


def vceil(x):
    """math.ceil (an int) or np.ceil."""
    return numpy().ceil(x) if is_array(x) else math.ceil(x)


def vsqrt(x):
    return numpy().sqrt(x) if is_array(x) else math.sqrt(x)


def where(cond, a, b):
    """a where cond, else b: a plain conditional for a number, np.where for an array."""
    return numpy().where(cond, a, b) if is_array(cond) else (a if cond else b)


def every(cond) -> bool:
    """Whether cond holds, for a number or for all of an array's elements; Ragged when it holds for some only."""
    if not is_array(cond):
        return bool(cond)
    if cond.all():
        return True
    if cond.any():
        raise Ragged
    return False


def item(x) -> float:
    """The one number of a figure (a number, or an array of one element)."""
    return float(x.item()) if is_array(x) else float(x)
