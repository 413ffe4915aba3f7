"""What every engine module provides, and the pieces they share: the engine's own flag list (taken from its
source at a stated commit, cmtwin/launch/flags/<engine>.json), a reader of command lines against it, and the
layout an imported command describes.

An engine module (cmtwin/launch/sglang.py, vllm.py, trtllm.py, vllm_ascend.py) defines
- `check(view)`: raise `Inexpressible` with the nearest expressible plan when the engine cannot run it;
- `export(view) -> Bundle`: the launch material per role, instance and node;
- `parse(argv, files) -> Imported`: a command of that engine read back into a layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from cmtwin.errors import ConfigError

FLAGS_DIR = Path(__file__).resolve().parent / "flags"
ENGINES = ("sglang", "vllm", "trtllm", "vllm-ascend")


def engine_module(engine: str):
    """The module that checks, exports and parses launches for `engine` (one of ENGINES)."""
    from cmtwin.launch import sglang, trtllm, vllm, vllm_ascend

    return {"sglang": sglang, "vllm": vllm, "trtllm": trtllm, "vllm-ascend": vllm_ascend}[engine]


@cache
def flag_list(engine: str) -> dict:
    """The engine's flag list (cmtwin/launch/flags/<engine>.json): {"flags": {"--name": {"bool": .., "choices":
    ..}}, "repo", "commit", ...}."""
    return json.loads((FLAGS_DIR / f"{engine.replace('-', '_')}.json").read_text())


def known_flags(engine: str, key: str = "flags") -> dict[str, dict]:
    """The engine's flags with their aliases (vLLM-Ascend runs vLLM's `vllm serve`: vLLM's flags)."""
    out = {}
    flags = flag_list(engine).get(key) or (flag_list("vllm").get(key, {}) if engine == "vllm-ascend" else {})
    changes = flag_list(engine).get("flag_changes") or {}  # values a plugin registers (vLLM-Ascend: --quantization ascend)
    flags = {n: ({**m, "choices": [*(m.get("choices") or []), changes[n]["adds_value"]]}
                 if n in changes and m.get("choices") else m) for n, m in flags.items()}
    for name, meta in flags.items():
        out[name] = meta
        for alias in meta.get("aliases") or ():
            out[alias] = meta
    return out


@dataclass
class Args:
    """A command line read against an engine's flag list: values by flag (the last wins), and the flags the
    engine does not know."""

    values: dict[str, str | bool] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    def get(self, *names: str, default=None):
        for n in names:
            if n in self.values:
                return self.values[n]
        return default

    def int(self, *names: str, default: int = 0) -> int:
        v = self.get(*names)
        if v is None:
            return default
        try:
            return int(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{names[0]} {v!r} is not a whole number.", key=names[0],
                              fix=f"give {names[0]} an integer") from None

    def flag(self, *names: str) -> bool:
        return bool(self.get(*names, default=False))

    def kv_cache_dtype(self) -> str:
        """cmtwin's KV dtype for --kv-cache-dtype (fp8, fp8_e4m3, fp8_e5m2: fp8; auto or absent: bf16)."""
        return "fp8" if str(self.get("--kv-cache-dtype", default="auto")).startswith("fp8") else "bf16"

    def json(self, name: str) -> dict:
        v = self.get(name)
        if not v:
            return {}
        try:
            out = json.loads(v)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name} {v!r} is not JSON ({exc.msg}).", key=name, fix=f"quote {name}'s JSON") from None
        return out if isinstance(out, dict) else {}


def read_args(engine: str, tokens: list[str], key: str = "flags") -> Args:
    """Flags and values of a command line (`--flag value`, `--flag=value`, bool switches), checked against the
    engine's flag list; `--no-<flag>` of a bool flag sets it false."""
    known = known_flags(engine, key)
    out = Args()
    i = 0
    while i < len(tokens):
        t = tokens[i]
        i += 1
        if not t.startswith("-"):
            continue  # a positional (the model path is read by the engine module)
        name, eq, value = t.partition("=")
        meta = known.get(name)
        if meta is None and name.startswith("--no-") and known.get("--" + name[5:], {}).get("bool"):
            out.values["--" + name[5:]] = False
            continue
        if meta is None:
            out.unknown.append(name)
            if not eq and i < len(tokens) and not tokens[i].startswith("-"):
                i += 1
            continue
        canonical = _canonical(name, known)
        if meta.get("bool") and not eq:
            if i < len(tokens) and tokens[i].lower() in ("true", "false"):
                out.values[canonical] = tokens[i].lower() == "true"
                i += 1
            else:
                out.values[canonical] = True
            continue
        if not eq:
            if i >= len(tokens):
                raise ConfigError(f"{name} has no value.", key=name, fix=f"give {name} a value")
            value = tokens[i]
            i += 1
        out.values[canonical] = value
    return out


def _canonical(name: str, known: dict[str, dict]) -> str:
    """An alias's long name (e.g. -tp -> --tensor-parallel-size, --tp_size -> --tensor_parallel_size)."""
    meta = known.get(name) or {}
    if meta.get("alias_of"):
        return meta["alias_of"]
    for long_name, m in known.items():
        if long_name.startswith("--") and long_name != name and name in (m.get("aliases") or ()):
            return long_name
    return name


@dataclass
class Imported:
    """One imported process: the role and layout it runs, in cmtwin's terms (ranks = engine devices)."""

    role: str  # prefill | decode | agg
    model_path: str
    ranks: int  # of one instance
    tp: int
    ep: int
    moe_tp: int
    pp: int
    redundant: int = 0
    microbatches: int = 1
    batch_per_group: int = 0  # decode / agg
    tokens_per_rank: int = 0  # prefill
    drafts: int = 0
    precision: str = "bf16"
    kv_cache_dtype: str = "bf16"
    budget: int | None = None  # agg: the step budget flag
    engine_budget: str | None = None  # whose scope the budget has (sglang | vllm)
    unknown: list[str] = field(default_factory=list)
