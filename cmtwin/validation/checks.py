"""`cmtwin validate`: the twin's predictions beside every published figure it was checked on
(the papers and READMEs each reference table names).

Operator tables are what the twin is calibrated on (a row's error shows the fit, not a prediction of unseen
data); headlines are whole-deployment results the twin was NOT fitted to. Both are reported with the error.
"""

from __future__ import annotations

from dataclasses import dataclass

from cmtwin.twin import reference as ref


@dataclass(frozen=True)
class Check:
    group: str  # operator table or headline
    name: str
    published: float
    predicted: float
    unit: str
    source: str
    tolerance: float | None = None  # the acceptance bound, where one exists

    @property
    def feasible(self) -> bool:
        """False where the twin finds no operating point (an SLO no batch meets): predicted is NaN."""
        return self.predicted == self.predicted

    @property
    def error(self) -> float | None:
        return (self.predicted - self.published) / self.published if self.feasible else None

    @property
    def ok(self) -> bool | None:
        """True within the bound, False outside it or infeasible, None where the row has no bound."""
        if not self.feasible:
            return False
        if self.tolerance is None:
            return None
        return abs(self.error) <= self.tolerance

    def bound(self) -> str:
        """The bound the row is judged against, as printed: '±5 %', or '-' where it has none."""
        return "-" if self.tolerance is None else f"±{self.tolerance * 100:g} %"

    def verdict(self) -> str:
        """'yes' within the bound, 'no' outside it (or infeasible), '-' where the row is not judged."""
        return "-" if self.ok is None else ("yes" if self.ok else "no")

    def cells(self) -> tuple[str, str]:
        """The twin's value and its error as printed."""
        if not self.feasible:
            return "infeasible", "-"
        return f"{self.predicted:,.4g}", f"{self.error:+.1%}"


def _load(name: str, overrides=()):
    from cmtwin.config.compose import load_spec

    return load_spec([f"+deployment={name}", *overrides])[0]


def collective_checks() -> list[Check]:
    from cmtwin.topology.fabric import fabric_for, freeze_overrides, get_fabric
    from cmtwin.twin import comm
    from cmtwin.twin.load import distinct_ranks_per_token

    out: list[Check] = []
    cases = [
        ("r1_ep320", ref.CM384_DISPATCH_COMBINE, None, 0.10),
        ("r1_h800_ep144", ref.DEEPEP_LL_H800, {"nodes": 32}, 0.15),
        # other kernels and token counts on the same hardware: how the fixed + per-token split extrapolates
        ("r1_ep320", ref.A3_DEEPEP_LL_128, None, None),
        ("r1_ep320", ref.A3_SMALL_BATCH_32, None, None),
    ]
    for dep, table, params, tol in cases:
        spec = _load(dep)
        fab = fabric_for(spec) if params is None else get_fabric(
            spec.topology.file, freeze_overrides({**spec.topology.params, **params}))
        hw = spec.hardware
        for ep, d_us, c_us in table["rows"]:
            ids = tuple(d.id for d in fab.dies()[:ep])
            copies = table["tokens"] * distinct_ranks_per_token(8, 256, ep)
            for kind, meas in (("dispatch", d_us), ("combine", c_us)):
                t = comm.dispatch_combine(hw, fab, ids, kind=kind, send_copies=copies, recv_copies=copies,
                                          msg_bytes=spec.prec.message_bytes(kind, spec.model.hidden))
                out.append(Check(table.get("group", f"{hw.name} dispatch and combine"),
                                 f"EP{ep} {kind}, {table['tokens']} tokens/rank",
                                 meas, t.us, "us", table["source"], tol))
    out += _deepep_normal_checks()
    out += _nvlink_ep_checks()
    out += _blackwell_ep_checks()
    out += _nccl_checks()
    return out


def _deepep_normal_checks() -> list[Check]:
    """DeepEP's normal (prefill) kernels on H800 through the twin's node-forwarding model, as the table counts
    bandwidth (twin/reference.py DEEPEP_NORMAL_H800): EP8 and the RDMA-bound EP32 and EP64 rows set the two
    efficiencies (judged within 5 %); EP16, where the NVLink forwarding binds, is the check (unjudged)."""
    from cmtwin.topology.fabric import freeze_overrides, get_fabric
    from cmtwin.twin import comm
    from cmtwin.twin.calibration import deepep_normal_volumes

    spec = _load("r1_h800_ep144")
    fab = get_fabric(spec.topology.file, freeze_overrides({**spec.topology.params, "nodes": 8}))
    hw, t = spec.hardware, ref.DEEPEP_NORMAL_H800
    out = []
    for ep, d_gbs, c_gbs in t["rows"]:
        ids = tuple(d.id for d in fab.dies()[:ep])
        counted, remote, ranks = deepep_normal_volumes(ep)
        for kind, meas in (("dispatch", d_gbs), ("combine", c_gbs)):
            msg = spec.prec.message_bytes(kind, spec.model.hidden)
            c = comm.dispatch_combine_forwarded(hw, fab, ids, kind=kind, tokens=t["tokens"], remote_nodes=remote,
                                                recv_copies=t["tokens"] * ranks, msg_bytes=msg)
            bytes_counted = t["tokens"] * (ranks if ep == 8 else counted) * msg
            out.append(Check("h800_sxm DeepEP normal kernels (prefill), GB/s as DeepEP counts",
                             f"EP{ep} {kind}, {t['tokens']} tokens/rank", meas, bytes_counted / c.us / 1e3, "GB/s",
                             t["source"], None if ep == 16 else 0.05))
    return out


def _blackwell_ep_checks() -> list[Check]:
    """Hybrid-EP inside one NVLink 5 domain (B200 node, GB200 NVL72) as algorithm bandwidth: the twin's volume per
    rank over its dispatch/combine time. The widest row of each system sets efficiency_scale_up; the others show
    how the fit carries across EP degrees."""
    from cmtwin.model.precision import PRECISIONS
    from cmtwin.topology.fabric import fabric_for
    from cmtwin.twin import comm
    from cmtwin.twin.load import distinct_ranks_per_token

    out = []
    t = ref.HYBRID_EP
    p = PRECISIONS["fp8"]
    for hw_name, ranks, d_gbps, c_gbps in t["rows"]:
        topology = "gb200_nvl72" if hw_name == "gb200" else "b200_cluster"
        spec = _load("r1_gb200_nvl72", [f"hardware={hw_name}", f"topology={topology}", "prefill.instances=0",
                                        "decode.devices=8", "decode.ep=8", "decode.redundant_experts=0"])
        fab = fabric_for(spec)
        ids = tuple(d.id for d in fab.dies()[:ranks])
        copies = t["tokens"] * distinct_ranks_per_token(8, 256, ranks)
        for kind, meas in (("dispatch", d_gbps), ("combine", c_gbps)):
            c = comm.dispatch_combine(spec.hardware, fab, ids, kind=kind, send_copies=copies, recv_copies=copies,
                                      msg_bytes=p.message_bytes(kind, 7168))
            out.append(Check(f"{hw_name} Hybrid-EP, one NVLink domain", f"EP{ranks} {kind}, {t['tokens']} tokens/rank",
                             meas, c.bytes / c.us / 1e3, "GB/s", t["source"]))
    return out


def _nvlink_ep_checks() -> list[Check]:
    """pplx-kernels on one 8 x H100 node (NVLink only): the 1-token rows set fixed_us_scale_up, the 128-token
    rows show how the fixed + per-token split extrapolates."""
    from cmtwin.topology.fabric import freeze_overrides, get_fabric
    from cmtwin.twin import comm
    from cmtwin.twin.load import distinct_ranks_per_token

    spec = _load("r1_h100_ep72")
    fab = get_fabric(spec.topology.file, freeze_overrides({**spec.topology.params, "nodes": 1}))
    ids = tuple(d.id for d in fab.dies()[:8])
    table = ref.PPLX_EP8_H100
    out = []
    for tokens, d_us, c_us in table["rows"]:
        copies = tokens * distinct_ranks_per_token(8, 256, 8)
        for kind, meas in (("dispatch", d_us), ("combine", c_us)):
            t = comm.dispatch_combine(spec.hardware, fab, ids, kind=kind, send_copies=copies, recv_copies=copies,
                                      msg_bytes=spec.prec.message_bytes(kind, spec.model.hidden))
            out.append(Check("h100_sxm pplx-kernels EP8, one NVLink node", f"{kind}, {tokens} token(s)/rank", meas,
                             t.us, "us", table["source"]))
    return out


def _nccl_checks() -> list[Check]:
    """NCCL collectives on 8 and 16 H100s beside the twin's (unjudged: the fixed costs come from the smallest
    size, the other sizes show how the fixed + per-byte split extrapolates)."""
    from cmtwin.topology.fabric import fabric_for
    from cmtwin.twin import comm

    spec = _load("r1_h100_tp16")
    fab, hw = fabric_for(spec), spec.hardware
    dies = tuple(d.id for d in fab.dies())
    out = []
    t = ref.NCCL_ALL_REDUCE_H100
    for ranks, nbytes, us in t["rows"]:
        pred = comm.all_reduce(hw, fab, dies[:ranks], nbytes=nbytes).us
        out.append(Check(t["group"], f"{ranks} GPUs, {nbytes // 1024} KiB", us, pred, "us", t["source"]))
    t = ref.NCCL_AG_A2A_H100
    for kind, nbytes, us in t["rows"]:
        c = (comm.all_gather(hw, fab, dies[:8], bytes_per_rank=nbytes / 8) if kind == "all_gather"
             else comm.all_to_all(hw, fab, dies[:8], bytes_per_rank=nbytes))
        out.append(Check(t["group"], f"{kind}, {nbytes // 1024} KiB", us, c.us, "us", t["source"]))
    return out


def expert_load_checks() -> list[Check]:
    """The load model's busiest rank after EPLB beside TensorRT-LLM's statistics (the fit of
    placement.load_fluctuation_cv: the rows' std gave it, their max/mean is reproduced here)."""
    from cmtwin.twin.load import busiest_rank_tokens

    fluct = _load("r1_ep320").placement.load_fluctuation_cv
    t = ref.EXPERT_LOAD_EPLB
    out = []
    for ep, slots, redundant, per_rank, ratio in t["rows"]:
        pred = busiest_rank_tokens([1 / ep] * ep, per_rank * ep, noise=True, slots=slots, fluctuation=fluct) / per_rank
        out.append(Check(t["group"], f"EP{ep}, {slots} slots per rank ({redundant} redundant), {per_rank:,} copies "
                                     f"per rank", ratio, pred, "x", t["source"]))
    return out


def kernel_checks() -> list[Check]:
    from cmtwin.model.operators import Op, gemm
    from cmtwin.twin.cost import op_time

    out: list[Check] = []
    asc = _load("r1_ep320").hardware
    for g, m, n, k, util in ref.CM384_INT8_GROUPED_GEMM["rows"]:
        op = gemm("grouped_gemm", m, k, n, "int8", cls="grouped_gemm", groups=g)
        t = op_time(op, asc)
        pred = op.flops / (t.us * 1e-6) / asc.peak_flops("int8")
        out.append(Check("ascend_910c INT8 grouped GEMM", f"{g}x[{m}x{n}x{k}] compute utilisation", util, pred,
                         "of peak",
                         ref.CM384_INT8_GROUPED_GEMM["source"]))
    h800 = _load("r1_h800_ep144").hardware
    for m, n, k, tflops, _gbps in ref.DEEPGEMM_DENSE["rows"]:
        op = gemm("gemm", m, k, n, "fp8")
        t = op_time(op, h800)
        out.append(Check("h800_sxm DeepGEMM dense FP8", f"M={m} N={n} K={k}", tflops, op.flops / t.us / 1e6, "TFLOPS",
                         ref.DEEPGEMM_DENSE["source"]))
    for layout, g, m, n, k, tflops, _gbps in ref.DEEPGEMM_GROUPED["rows"]:
        op = gemm("grouped", m, k, n, "fp8", cls="grouped_gemm", groups=g)
        t = op_time(op, h800)
        out.append(Check("h800_sxm DeepGEMM grouped FP8", f"{layout} {g}x M={m} N={n} K={k}", tflops,
                         op.flops / t.us / 1e6, "TFLOPS", ref.DEEPGEMM_GROUPED["source"]))
    # FlashMLA: a memory-bound (batch 64, 1 query token, 4096 KV) and a compute-bound (128 heads x 2 tokens) case.
    for label, b, sq, published, unit in (("memory-bound: 64 x 4,096 KV, s_q=1", 64, 1, ref.FLASHMLA_H800["memory_GB_per_s"], "GB/s"),
                                          ("compute-bound: 128 x 4,096 KV, s_q=2", 128, 2, ref.FLASHMLA_H800["compute_tflops"], "TFLOPS")):
        L, heads, d, dv = 4096, 128, 576, 512
        flops = 2.0 * b * sq * heads * L * (d + dv)
        kv = b * L * d * 2.0
        op = Op("mla", "attention_decode", flops, 0.0, 0.0, kv, "bf16", b * sq)
        t = op_time(op, h800)
        t_us = t.us - t.overhead_us
        pred = kv / t_us / 1e3 if unit == "GB/s" else flops / t_us / 1e6
        out.append(Check("h800_sxm FlashMLA", label, published, pred, unit, ref.FLASHMLA_H800["source"]))
    return out


def _metric_unit(key: str) -> str:
    """The unit of a twin metric, from its name (decode.tpot_ms -> ms)."""
    if key.endswith("_ms"):
        return "ms"
    if "tokens_per_s" in key:
        return "tokens/s"
    return ""


def headline_checks() -> list[Check]:
    from cmtwin.planner.plan import compile_plan
    from cmtwin.twin.predict import predict

    out: list[Check] = []
    for h in ref.HEADLINES:
        spec = _load(h["deployment"], h["overrides"])
        try:
            pred = predict(spec, compile_plan(spec)).metrics().get(h["key"], float("nan"))
        except Exception as exc:  # an infeasible SLO is a result too
            from cmtwin.errors import CmtwinError

            if not isinstance(exc, CmtwinError):
                raise
            pred = float("nan")
        extra = " ".join(h["overrides"])
        out.append(Check("headline", f"{h['name']} ({h['conditions']}{'; ' + extra if extra else ''})", h["value"],
                         pred, h.get("unit") or _metric_unit(h["key"]), ref.PAPER, h["tolerance"]))
    return out


def all_checks() -> list[Check]:
    return collective_checks() + kernel_checks() + expert_load_checks() + headline_checks()


EXIT_OUTSIDE_BOUNDS = 3
"""`cmtwin validate`'s exit code when it ran fine but some row is outside its bound (or infeasible)."""

LEGEND = (
    "unit: the unit of the published and the twin figures; error: (twin - published) / published.",
    "bound: the largest |error| at which a row still passes (±5 % = within 5 % of the published figure); "
    "'-' = no bound: operator-table rows the twin is calibrated on show the quality of the fit and are not judged.",
    "ok: yes = the error is within the bound; no = outside it, or infeasible (the twin finds no operating point "
    "for the row's conditions); '-' = not judged.",
    f"exit code of `cmtwin validate`: {EXIT_OUTSIDE_BOUNDS} when any row reads no (ran fine, some figures outside "
    "their bounds), 0 when every judged row is within its bound, 2 on bad input, 1 on an internal error.",
)
"""The legend under the table: what each column means and what the exit code says."""


def outside(checks: list[Check]) -> list[Check]:
    """The rows outside their bound (infeasible rows included)."""
    return [c for c in checks if c.ok is False]


def summary(checks: list[Check]) -> str:
    """One line: how many judged rows are within their bound."""
    judged = [c for c in checks if c.ok is not None]
    bad = outside(checks)
    line = f"{len(judged) - len(bad)} of {len(judged)} judged rows within their bound"
    return line + (f"; {len(bad)} outside (ok: no)." if bad else ".")


def markdown(checks: list[Check]) -> str:
    lines = [
        "# Twin validation",
        "",
        "Generated by `cmtwin validate --out docs`. Operator tables are what the twin is calibrated on (their rows",
        "show the quality of the fit); headline results are whole deployments the twin was *not* fitted to.",
        "",
    ]
    group = None
    for c in checks:
        if c.group != group:
            group = c.group
            lines += ["", f"## {group}", "", f"Source: {c.source}", "",
                      "| case | unit | published | twin | error | bound | ok |", "|---|---|---|---|---|---|---|"]
        pred, err = c.cells()
        ok = "**no**" if c.ok is False else c.verdict()
        lines.append(f"| {c.name} | {c.unit} | {c.published:,.4g} | {pred} | {err} | {c.bound()} | {ok} |")
    lines += ["", "## How to read these tables", "", *(f"- {item}" for item in LEGEND), "",
              f"Summary: {summary(checks)}"]
    return "\n".join(lines) + "\n"


def iter_constants(profile: dict, prefix: str = ""):
    """(key path, value, source) for every sourced constant of a hardware profile dict."""
    if isinstance(profile, dict):
        if "value" in profile and "source" in profile:
            yield prefix, profile["value"], profile["source"]
            return
        if "points" in profile and "source" in profile:
            yield prefix, profile["points"], profile["source"]
            return
        for k, v in profile.items():
            if k == "source":
                continue
            yield from iter_constants(v, f"{prefix}.{k}" if prefix else k)


def constants_markdown() -> str:
    """Every constant of every hardware profile with its source (docs/calibration.md)."""
    import yaml

    from cmtwin.paths import conf_dir

    lines = ["# Calibrated constants", "",
             "Generated by `cmtwin validate --out docs` from conf/hardware/*.yaml: every number the twin uses, and its",
             "source.",
             "No constant is derived from a whole-deployment (headline) result.", ""]
    for path in sorted((conf_dir() / "hardware").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        lines += [f"## {path.stem}", "", "| constant | value | source |", "|---|---|---|"]
        for key, value, source in iter_constants(data):
            lines.append(f"| `{key}` | {value} | {source} |")
        mb = data.get("microbatching")
        if mb:
            mode = mb.get("mode")
            if mb.get("prefill_comm_on_vector_cores"):
                mode += "; prefill comm on the vector cores"
            lines.append(f"| `microbatching` | {mode} | {mb.get('source')} |")
        lines.append("")
    from cmtwin.config.fielddocs import field_docs
    from cmtwin.config.schema import PlacementSpec

    doc = " ".join(field_docs(PlacementSpec)["load_fluctuation_cv"].split())
    default = PlacementSpec.model_fields["load_fluctuation_cv"].default
    lines += ["## Traffic (conf/config.yaml)", "", "| constant | value | source |", "|---|---|---|",
              f"| `placement.load_fluctuation_cv` | {default} | {doc} |", ""]
    return "\n".join(lines)
