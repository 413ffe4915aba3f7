"""`cmtwin plan|simulate|search -m key=a,b,c ...`: a sweep is a Hydra multirun. Hydra's sweeper expands the
overrides (`a,b,c`, `range(...)`, globs) into jobs and Hydra's launcher runs them: `basic` in this process (the
default), `hydra/launcher=joblib` in local processes (the `sweep` extra: hydra-joblib-launcher), or any launcher
plugin installed beside cmtwin for other machines: `hydra/launcher=ray` (the `ray` extra: hydra-ray-launcher) as Ray
tasks on a local Ray instance or the cluster RAY_ADDRESS names, `hydra/launcher=submitit_slurm` (the `slurm` extra:
hydra-submitit-launcher) as SLURM jobs. Each job is the verb run as usual on its overrides, recorded in the store
with the sweep's id (`runs ls --sweep ID`); with a shared PostgreSQL store (`CMTWIN_DB_URL`) every machine's runs
land in one place. No scheduler of cmtwin's own.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from datetime import datetime, timezone

from cmtwin.errors import ConfigError


def multirun(args: argparse.Namespace) -> int:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cmtwin.config.compose import USER_CONF, check_user_files
    from cmtwin.paths import conf_dir, data_root
    from cmtwin.store.direct import SWEEP_ENV

    overrides = list(args.overrides or [])
    hydra_keys = [o for o in overrides if o.startswith(("hydra.", "hydra/"))]
    job_keys = [o for o in overrides if o not in hydra_keys]
    if not any("," in o or "(" in o for o in job_keys):
        raise ConfigError("-m runs a sweep, but no override lists several values.", key="-m",
                          fix="give one, e.g. workload.load=0.5,0.7,0.9 (or drop -m)")
    check_user_files()
    sweep = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    os.environ[SWEEP_ENV] = sweep
    base = [f"hydra.searchpath=[file://{os.path.abspath(USER_CONF)},file://{data_root()}]",
            f"hydra.sweep.dir={os.path.abspath('runs/sweeps')}/{sweep}", "hydra.output_subdir=null",
            "hydra/job_logging=disabled"]
    job = _Job(args, sweep)
    GlobalHydra.instance().clear()
    import warnings

    warnings.filterwarnings("ignore", message=".*is not available", category=UserWarning)  # no ./cmtwin_conf
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            hydra = GlobalHydra.instance().hydra
            results = hydra.multirun(config_name="config", task_function=job, overrides=[*base, *hydra_keys, *job_keys])
    except ConfigError:
        raise
    except Exception as exc:  # Hydra's own errors (a bad sweep syntax, a missing launcher plugin) are bad input
        from cmtwin.config.compose import _hydra_error

        raise _hydra_error(exc, tuple(overrides)) from None
    finally:
        GlobalHydra.instance().clear()
        os.environ.pop(SWEEP_ENV, None)
    codes = [r.return_value if r.status.name == "COMPLETED" else 1 for batch in results for r in batch]
    failed = sum(1 for c in codes if c)
    print(f"sweep {sweep}: {len(codes)} runs, {failed} failed; `cmtwin runs ls --sweep {sweep}` lists them",
          file=sys.stderr)
    return 1 if failed else 0


class _Job:
    """One job of the sweep: the verb on the job's overrides (a picklable callable, for process launchers). It
    carries the sweep's id to wherever the launcher runs it: a launcher's worker may have started before this sweep
    (Ray's, joblib's reused ones) or on another machine, so it does not inherit the variable."""

    def __init__(self, args: argparse.Namespace, sweep: str):
        self.args = args
        self.sweep = sweep

    def __call__(self, cfg) -> int:
        from hydra.core.hydra_config import HydraConfig

        from cmtwin.cli.main import report_error
        from cmtwin.errors import CmtwinError
        from cmtwin.store.direct import SWEEP_ENV

        args = copy.copy(self.args)
        args.overrides = [o for o in HydraConfig.get().overrides.task]
        args.multirun = False
        before = os.environ.get(SWEEP_ENV)
        os.environ[SWEEP_ENV] = self.sweep
        try:
            return int(args.func(args) or 0)
        except CmtwinError as exc:
            report_error(exc)
            return exc.exit_code
        finally:
            if before is None:
                os.environ.pop(SWEEP_ENV, None)
            else:
                os.environ[SWEEP_ENV] = before
