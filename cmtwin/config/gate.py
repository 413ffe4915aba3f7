"""The one gate through which configs may name code: `_target_` only under allowed prefixes.

Configs come from many people; a `_target_: os.system` must never run. Every `_target_` in a composed config
is checked here (at composition, before anything is instantiated), and `instantiate` is the only way cmtwin
turns a config node into an object. Allowed: `cmtwin.` and the modules of plugins registered through the
`cmtwin.plugins` entry-point group.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from cmtwin.errors import ConfigError

BUILTIN_PREFIXES = ("cmtwin.",)


@cache
def allowed_prefixes() -> tuple[str, ...]:
    """cmtwin's own prefix plus one per registered plugin (entry point group `cmtwin.plugins`)."""
    from importlib.metadata import entry_points

    plugins = tuple(f"{ep.module.split('.')[0]}." for ep in entry_points(group="cmtwin.plugins"))
    return BUILTIN_PREFIXES + plugins


def check_targets(node: Any, path: str = "") -> None:
    """Raise ConfigError for any `_target_` outside the allowed prefixes, anywhere in the tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if key in ("_target_", "_partial_target_") or (isinstance(key, str) and key.startswith("_target")):
                if not isinstance(value, str) or not value.startswith(allowed_prefixes()) or ".." in value:
                    from cmtwin.config.compose import short_repr

                    raise ConfigError(
                        f"'{here}' = {short_repr(value, 80)}: a config may only name code under {', '.join(allowed_prefixes())} "
                        "(configs cannot run arbitrary code).", key=here,
                        fix="use a cmtwin.* class or register your plugin under the 'cmtwin.plugins' entry point")
            check_targets(value, here)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_targets(value, f"{path}[{i}]")


def instantiate(node: dict, **kwargs: Any) -> Any:
    """Instantiate a config node after the gate has checked it."""
    from hydra.utils import instantiate as hydra_instantiate

    check_targets(node)
    return hydra_instantiate(node, **kwargs)
