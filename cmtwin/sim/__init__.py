"""Discrete-event serving simulation: event engine, entities, metrics.

Public API (imported lazily, so the config schema can import cmtwin.sim.spec cheaply):
`Simulator(spec, plan, ...)` -> `.run()` -> `SimResult`; `load_trace(path)` (raises `TraceError`);
`Environment` (the event engine).
"""

_EXPORTS = {
    "Environment": "cmtwin.sim.engine",
    "Simulator": "cmtwin.sim.serving",
    "SimResult": "cmtwin.sim.serving",
    "TraceError": "cmtwin.sim.traffic",
    "load_trace": "cmtwin.sim.traffic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
