"""The base of every validated spec: frozen, strict about unknown keys, docstrings as field descriptions."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """Immutable, validated, no unknown keys, finite numbers only (inf and nan are refused: they would reach the
    twin's arithmetic and the run store's JSON). The docstring under each field is its description, read from the
    source only when asked for (cmtwin/config/fielddocs.py), not at import."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
