"""Policy registries, one per family, keyed by name.

A policy is a class with a pydantic `Params` model and the family's methods. Registering a name twice
raises; an unknown name is a ConfigError listing the valid ones. Third-party policies register through the
`cmtwin.policies` entry-point group (each entry point is imported once, on first lookup).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from cmtwin.errors import ConfigError

FAMILIES = ("sp_attention", "speculation", "layer_skip", "model_routing", "token_transform", "batching",
            "expert_placement")


class Policy:
    """Base of the built-in policies: an instance holds its validated `Params` (the class attribute names the
    model; the registry's `build` validates a preset against it)."""

    Params: type
    name: str
    family: str

    def __init__(self, params):
        self.params = params

    def breakdown_rows(self, table: list[dict]) -> list:
        """Rows (cmtwin.twin.breakdown.Row) this policy adds to a prediction's breakdown from its what-if table
        (a typed side report, so the twin names no policy); none by default."""
        return []


class Registry:
    """Name -> policy class for one family."""

    def __init__(self, family: str):
        self.family = family
        self._items: dict[str, type] = {}

    def register(self, name: str):
        def deco(cls):
            if name in self._items:
                raise ValueError(f"policy {self.family}/{name} is registered twice "
                                 f"({self._items[name].__module__} and {cls.__module__})")
            cls.name = name
            cls.family = self.family
            self._items[name] = cls
            return cls
        return deco

    def names(self) -> list[str]:
        _load_builtin()
        return sorted(self._items)

    def get(self, name: str) -> type:
        _load_builtin()
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.family} policy '{name}'. Valid: {', '.join(self.names()) or 'none'}.",
                              key=f"policies.{self.family}.name") from None

    def build(self, params: dict[str, Any]):
        """Instantiate the policy a preset names, validating its parameters."""
        from pydantic import ValidationError

        params = dict(params)
        name = params.pop("name", None)
        if not name:
            raise ConfigError(f"policies.{self.family} needs a name (one of {', '.join(self.names())}).",
                              key=f"policies.{self.family}.name")
        cls = self.get(name)
        try:
            return cls(cls.Params.model_validate(params))
        except ValidationError as exc:
            from cmtwin.config.compose import validation_error

            raise validation_error(exc, what=f"policies.{self.family} ({name})") from None


REGISTRIES = {f: Registry(f) for f in FAMILIES}


def registry(family: str) -> Registry:
    if family not in REGISTRIES:
        raise ConfigError(f"unknown policy family '{family}'. Families: {', '.join(FAMILIES)}.", key="policies")
    return REGISTRIES[family]


@cache
def _load_builtin() -> None:
    import importlib
    from importlib.metadata import entry_points

    for module in ("cmtwin.policy.sp_attention", "cmtwin.policy.speculation", "cmtwin.policy.layer_skip",
                   "cmtwin.policy.model_routing", "cmtwin.policy.token_transform", "cmtwin.policy.batching"):
        importlib.import_module(module)
    for ep in entry_points(group="cmtwin.policies"):
        ep.load()
