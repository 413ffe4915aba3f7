"""`cmtwin export launch`: a plan (or a search candidate) as the launch material of an engine, with a README that
says how to start it and what cmtwin predicts for it. A plan the engine cannot express is refused with the reason
and the nearest plan it can express; `nearest=True` exports that plan instead (and says so)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cmtwin.errors import CmtwinError
from cmtwin.launch.bundle import Bundle, write_bundle
from cmtwin.launch.context import context_line
from cmtwin.launch.engine import engine_module, flag_list
from cmtwin.launch.view import Inexpressible, launch_view

TITLES = {"sglang": "SGLang", "vllm": "vLLM", "trtllm": "TensorRT-LLM", "vllm-ascend": "vLLM-Ascend"}


@dataclass
class Exported:
    bundle: Bundle
    spec: object
    overrides: list[str]
    written: list[Path] = field(default_factory=list)
    nearest: list[str] = field(default_factory=list)  # overrides applied to reach an expressible plan
    refused: list[str] = field(default_factory=list)  # why the plan as given could not be exported


def export_launch(overrides: list[str], engine: str, out: Path | None, *, nearest: bool = False) -> Exported:
    from cmtwin.config.compose import load_spec
    from cmtwin.planner.plan import compile_plan

    mod = engine_module(engine)
    applied, refused = [], []
    for _ in range(4):  # each round applies one refusal's nearest plan
        spec, composed = load_spec(overrides + applied)
        try:
            plan = compile_plan(spec)
        except CmtwinError as exc:
            if not applied:
                raise
            raise CmtwinError(f"{TITLES[engine]} cannot express the plan (" + "; ".join(refused) + "), and its "
                              f"nearest plan ({' '.join(applied)}) does not plan either: {exc}", key="--engine",
                              fix="give the plan more devices, or use another engine") from None
        view = launch_view(spec, plan)
        try:
            bundle = mod.export(view)
            break
        except Inexpressible as exc:
            if not nearest:
                raise
            last = exc
            refused += exc.reasons
            applied += [o for o in exc.nearest if o not in applied]
    else:  # pragma: no cover - every refusal names overrides that remove it
        raise last
    result = Exported(bundle, spec, overrides + applied, nearest=applied, refused=refused)
    if out is not None:
        result.written = write_bundle(bundle, out, context_line(composed), readme(result, engine, plan))
    return result


def readme(result: Exported, engine: str, plan) -> str:
    from cmtwin.twin.predict import predict

    spec, b = result.spec, result.bundle
    flags = flag_list(engine)
    pred = predict(spec, plan)
    title = TITLES[engine]
    lines = [f"# {spec.deployment.name} on {title}", "",
             f"Launch material written by `cmtwin export launch` for {spec.model.name} on {spec.hardware.name} "
             f"({spec.topology.name}). Every flag is one of {title}'s own, from its source at "
             f"{flags['repo']}@{flags['commit'][:10]} (cmtwin/launch/flags/).", ""]
    if result.nearest:
        lines += [f"**Not the plan as given**: {title} cannot express it (" + "; ".join(result.refused) + "). This is "
                  "the nearest plan it can run: `cmtwin plan ... " + " ".join(result.nearest) + "` predicts it.", ""]
    lines += ["## Start", "", "| script | role | instance | node |", "|---|---|---|---|"]
    lines += [f"| `{x.name}` | {x.role} | {x.instance} | {x.node} |" for x in b.launches]
    if b.router:
        lines += ["| `router.sh` | router | - | - |"]
    lines += [""]
    lines += [f"- {n}" for n in b.notes]
    lines += ["- Start node 0 of every instance first, then the other nodes, then the router.",
              "- `cmtwin import launch <this directory>` reads the scripts back into a deployment.", ""]
    lines += ["## What cmtwin predicts for it", "", "| phase | tokens/s per device | latency | batch |", "|---|---|---|---|"]
    if pred.prefill:
        p = pred.prefill
        lines.append(f"| prefill | {p.tokens_per_s_per_device:,.0f} | TTFT {p.ttft_ms:,.1f} ms | "
                     f"{p.tokens_per_device:,} tokens per device |")
    if pred.decode:
        d = pred.decode
        lines.append(f"| decode | {d.tokens_per_s_per_device:,.0f} | TPOT {d.tpot_ms:,.2f} ms | "
                     f"{d.batch_per_group:,} requests per attention group |")
    lines += ["", f"Bottleneck: {pred.bottleneck}.", "",
              "Reproduce: `cmtwin plan " + " ".join(result.overrides) + "`.", ""]
    return "\n".join(lines)
