"""The base of every validated spec: frozen, strict about unknown keys, docstrings as field descriptions."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """Immutable, validated, no unknown keys; attribute docstrings become the JSON-schema descriptions."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)
