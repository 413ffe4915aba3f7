"""Wall time of `cmtwin plan` (compose + compile + predict + record), end to end as a user runs it.

usage: python benchmarks/bench_plan.py [--repeat N] [--against REV] [--no-bytecode]

Times `cmtwin plan +deployment=DEP` (the table on stdout, sent to /dev/null) with the cmtwin of the checkout this
file is in (its root goes first on PYTHONPATH), in a fresh folder with its own run store and cache folder. Prints
the machine and its load (before and after), then per deployment the median and best of N (default 5) runs warm
(the composed config and the fabric read from the cache, the store already at head, Python's bytecode cached: as
every run after the first) and without the cache (CMTWIN_CACHE_DIR="": Hydra composes and the fabric is built
each time), their ratio, and the ratio of the warm median to issue 21's 0.5 s goal.

Bytecode is cached in a temporary PYTHONPYCACHEPREFIX (as an installed package has it, without writing into the
checkout), even where PYTHONDONTWRITEBYTECODE is set; --no-bytecode leaves the environment's setting (with
PYTHONDONTWRITEBYTECODE=1 every run then compiles cmtwin's sources again).

--against REV also times the code of git revision REV (exported with `git archive` into a temporary folder, run
the same way, with runs of the two interleaved so that both see the same load) and prints the ratio of this
checkout's warm median to REV's. To time a commit without the uncommitted changes of a shared checkout, export it
and run its copy of this file from the checkout: `git archive HEAD | tar -x -C /tmp/head && python
/tmp/head/benchmarks/bench_plan.py --against REV`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, export, load, machine

DEPLOYMENTS = ["r1_ep320", "r1_h800_ep144", "r1_h100_ep72"]
GOAL_S = 0.5


def _plan_s(dep: str, code: Path, work: Path, cache: str, pycache: Path | None) -> float:
    """One `cmtwin plan` run of the code at `code`, in `work`, with CMTWIN_CACHE_DIR=cache (and bytecode cached
    under `pycache`); its wall time."""
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("CMTWIN_DB_URL", "CMTWIN_FULL_ERROR")}
    env.update(PYTHONPATH=str(code), CMTWIN_CACHE_DIR=cache)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    t0 = time.perf_counter()
    subprocess.run(["cmtwin", "plan", f"+deployment={dep}"], cwd=work, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 5
    against = sys.argv[sys.argv.index("--against") + 1] if "--against" in sys.argv else None
    bytecode = "--no-bytecode" not in sys.argv
    here = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                          text=True).stdout.strip()
    print(machine())
    print(f"code: {ROOT} ({here or 'not a git checkout'})" + (f", against {against}" if against else "")
          + (", bytecode cached" if bytecode else f", PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')}"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        codes = {"this": ROOT}
        if against:
            codes["against"] = export(against, tmp_path / "against")
        for dep in DEPLOYMENTS:
            warm: dict[str, list[float]] = {name: [] for name in codes}
            cold: list[float] = []
            pycache = {name: tmp_path / name / "pycache" if bytecode else None for name in codes}
            for name, code in codes.items():  # the first run fills the caches and creates the store
                _plan_s(dep, code, tmp_path / name / dep, str(tmp_path / name / "cache"), pycache[name])
            for _ in range(repeat):
                for name, code in codes.items():
                    warm[name].append(_plan_s(dep, code, tmp_path / name / dep, str(tmp_path / name / "cache"),
                                              pycache[name]))
                cold.append(_plan_s(dep, ROOT, tmp_path / "this" / dep, "", pycache["this"]))
            w, c = statistics.median(warm["this"]), statistics.median(cold)
            line = (f"cmtwin plan +deployment={dep:14s} warm median {w:.3f} s (best {min(warm['this']):.3f}), "
                    f"no cache {c:.3f} s: {w / c:.2f} x; {w / GOAL_S:.2f} x the {GOAL_S} s goal")
            if against:
                a = statistics.median(warm["against"])
                line += f"; {against} warm median {a:.3f} s: this is {w / a:.2f} x that"
            print(line)
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
