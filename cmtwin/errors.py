"""User-facing errors. Anything raised as a CmtwinError exits 2 with its message and no traceback."""

from __future__ import annotations


class CmtwinError(Exception):
    """Bad input or an infeasible plan: the message names the key, the value, the arithmetic and the fix."""

    exit_code = 2

    def __init__(self, message: str, *, key: str | None = None, fix: str | None = None):
        self.key = key
        self.fix = fix
        text = message.rstrip()
        if fix and fix not in text:
            text = f"{text} Fix: {fix}"
        super().__init__(text)


class ConfigError(CmtwinError):
    """A config, an override or a composed spec is wrong."""


class TopologyError(CmtwinError):
    """A topology file is malformed or breaks an invariant of the fabric it declares."""


class PlanError(CmtwinError):
    """A deployment cannot be compiled into a plan on the given hardware (e.g. HBM overflow)."""


class StoreError(CmtwinError):
    """The run store refused an operation (a write in a read-only query, a DB newer than the software...)."""
