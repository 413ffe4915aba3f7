"""Plan -> Prediction: prefill and decode figures per device, the per-operator breakdown, the bottleneck.

"Device" is the accelerator package (an NPU = 2 dies; a GPU). With `slo.tpot_ms` the decode batch is the
largest that meets it; with `slo.ttft_ms` the prefill tokens per device likewise (cmtwin/twin/slo.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from cmtwin.twin.breakdown import Row
from cmtwin.twin.results import DecodeFigures, PrefillFigures


@dataclass(frozen=True)
class Prediction:
    prefill: PrefillFigures | None
    decode: DecodeFigures | None
    breakdown: tuple[Row, ...]
    bottlenecks: dict[str, str]  # per phase: its critical stream and that stream's largest operator
    notes: tuple[str, ...] = field(default_factory=tuple)
    policies: dict[str, Any] = field(default_factory=dict)  # per selected policy family: its what-if table

    @property
    def bottleneck(self) -> str:
        """Every phase's bottleneck on one line ("prefill: ...; decode: ...")."""
        return "; ".join(f"{phase}: {text}" for phase, text in self.bottlenecks.items())

    def to_dict(self) -> dict[str, Any]:
        d = {
            "prefill": self.prefill.to_dict() if self.prefill else None,
            "decode": self.decode.to_dict() if self.decode else None,
            "breakdown": [r.to_dict() for r in self.breakdown],
            "bottleneck": self.bottleneck,
            "notes": list(self.notes),
        }
        d.update(self.policies)
        return d

    def metrics(self) -> dict[str, float]:
        """Key scalars for the store (flat names such as decode.tokens_per_s_per_device)."""
        out: dict[str, float] = {}
        for phase in ("prefill", "decode"):
            d = getattr(self, phase)
            for k, v in (d.to_dict() if d else {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{phase}.{k}"] = float(v)
        return out


def _bottleneck(ledger, streams: dict[str, float]) -> str:
    rows = ledger.rows()
    if not rows:
        return "nothing to run"
    total = sum(streams.values()) or 1.0
    crit = max(streams, key=streams.get)
    top = max((r for r in rows if r.stream == crit), key=lambda r: r.time_us)
    share = top.time_us / (streams[crit] or 1.0)
    return (f"stream '{crit}' ({streams[crit] / total:.0%} of busy time); its largest operator is "
            f"{top.operator} ({top.bound}-bound, {share:.0%} of the stream)")


def _round(x: float, n: int = 3) -> float:
    return float(f"{x:.{n}f}")


def _count(x: float) -> float | int:
    """A request count as printed: whole when it is whole, else to 4 decimals."""
    return int(round(x)) if abs(x - round(x)) < 1e-9 else _round(x, 4)


def predict(spec, plan) -> Prediction:
    """The plan's prefill and decode figures (an SLO, when set, picks the batch), their breakdown and bottleneck,
    and each selected policy's what-if table."""
    from cmtwin.topology.fabric import fabric_for

    hw, fabric = spec.hardware, fabric_for(spec)
    rows: list[Row] = []
    notes: list[str] = []
    bottlenecks: dict[str, str] = {}
    prefill = decode = None
    if plan.pools_of("prefill"):
        prefill = _prefill_figures(spec, plan, hw, fabric, rows, notes, bottlenecks)
    if plan.pools_of("decode"):
        decode, agg_prefill = _decode_figures(spec, plan, hw, fabric, rows, notes, bottlenecks)
        prefill = agg_prefill or prefill
    policies = _policy_tables(spec, plan, hw, fabric, rows, with_decode=decode is not None)
    return Prediction(prefill, decode, tuple(rows), bottlenecks, tuple(notes), policies)


def _prefill_figures(spec, plan, hw, fabric, rows, notes, bottlenecks) -> PrefillFigures:
    from cmtwin.twin.slo import search_prefill_tokens
    from cmtwin.twin.step import prefill_forward

    tokens = None
    if spec.slo.ttft_ms is not None:
        tokens, note = search_prefill_tokens(spec, plan, hw, fabric, spec.slo.ttft_ms)
        notes.append(note)
    r = prefill_forward(spec, plan, hw, fabric, tokens_per_die=tokens)
    rows += r.ledger.rows()
    bottlenecks["prefill"] = _bottleneck(r.ledger, r.streams)
    return PrefillFigures(
        tokens_per_s_per_device=_round(r.tokens_per_s_per_device, 1), step_ms=_round(r.step_us / 1e3),
        ttft_ms=_round(r.ttft_ms), tokens_per_device=r.tokens_per_die * spec.hardware.dies,
        kv_transfer_ms=_round(r.kv_transfer_us / 1e3), microbatches=spec.prefill.microbatches)


def _decode_figures(spec, plan, hw, fabric, rows, notes, bottlenecks) -> tuple[DecodeFigures, PrefillFigures | None]:
    """The decode figures, and (aggregated serving) the prefill figures of the chunks its steps carry."""
    from cmtwin.twin.slo import search_decode_batch
    from cmtwin.twin.step import decode_step

    batch = None
    if spec.slo.tpot_ms is not None:
        batch, note = search_decode_batch(spec, plan, hw, fabric, spec.slo.tpot_ms)
        notes.append(note)
    r = decode_step(spec, plan, hw, fabric, batch_per_die=batch)
    agg = spec.serving.mode == "agg"
    decode = DecodeFigures(
        tokens_per_s_per_device=_round(r.tokens_per_s_per_device, 1), tpot_ms=_round(r.tpot_ms),
        batch_per_device=_count(r.batch_per_device), batch_per_group=round(r.batch_per_device / spec.hardware.dies
                                                                            * spec.decode.tp),
        step_ms=_round(r.step_us / 1e3), tokens_per_step=_round(r.tokens_per_step, 4),
        kv_len=r.kv_len, microbatches=spec.decode.microbatches, mtp_draft_tokens=r.draft_tokens,
        # a speculation policy's tree (PPD) verifies other than 1 + drafts tokens per request
        verify_tokens_per_request=r.verify_tokens if r.verify_tokens != 1 + r.draft_tokens else None,
        serving_mode="agg" if agg else None,
        experts_read_per_rank=_round(r.ledger.experts[0], 2) if r.ledger.experts[1] else None,
        expert_slots_per_rank=r.ledger.experts[1] or None)
    rows += r.ledger.rows()
    bottlenecks["decode"] = _bottleneck(r.ledger, r.streams)
    if not agg:
        return decode, None
    from cmtwin.twin.agg import agg_prefill

    a = agg_prefill(spec, plan, hw, fabric, batch_per_die=r.batch_per_device / spec.hardware.dies,
                    decode_step_us=r.step_us, tokens_per_step=r.tokens_per_step, verify_tokens=r.verify_tokens)
    notes.append(f"agg: step budget {a.budget.per_group:,} tokens per attention group ({a.budget.label}); "
                 f"a {spec.workload.prompt_len:,}-token prompt takes {a.chunks_per_prompt} chunk(s) of "
                 f"{a.chunk_tokens:,}, waits {a.wait_ms:,.1f} ms for the budget (utilisation {a.budget_utilisation:.0%})")
    decode = replace(decode, tokens_per_s_per_device=_round(a.tokens_per_s_per_device, 1))
    return decode, PrefillFigures(
        tokens_per_s_per_device=_round(r.chunk_tokens * spec.hardware.dies / (r.step_us / 1e6), 1),
        step_ms=_round(a.chunk_step_us / 1e3), ttft_ms=_round(a.ttft_ms),
        tokens_per_device=round(a.chunk_tokens * spec.hardware.dies / spec.decode.tp),
        kv_transfer_ms=0.0, microbatches=spec.decode.microbatches, chunk_tokens_per_die=_round(r.chunk_tokens, 2),
        chunks_per_prompt=a.chunks_per_prompt, step_budget_tokens=a.budget.per_group,
        chunk_tokens_per_group=a.chunk_tokens, budget_wait_ms=_round(a.wait_ms),
        budget_utilisation=_round(a.budget_utilisation, 4))


def _policy_tables(spec, plan, hw, fabric, rows, *, with_decode: bool) -> dict[str, Any]:
    """Each selected policy family's what-if table; the rows a policy reports join the breakdown."""
    policies: dict[str, Any] = {}
    sp = spec.policies.build("sp_attention")
    if sp is not None:
        policies["sp_attention"] = table = sp.table(spec, plan, hw, fabric)
        rows += sp.breakdown_rows(table)
    if with_decode:
        from cmtwin.twin.effects import STEP_FAMILIES

        for family in STEP_FAMILIES:
            pol = spec.policies.build(family)
            if pol is not None:
                policies[family] = _step_policy_entry(spec, plan, hw, fabric, pol, rows)
    batching = spec.policies.build("batching")
    if batching is not None:  # the offline batch's prefill saving and decode KV (the simulator measures them)
        policies["batching"] = {"policy": batching.name, "table": batching.table(spec, plan, hw, fabric)}
    return policies


def _step_policy_entry(spec, plan, hw, fabric, pol, rows) -> dict[str, Any]:
    eff = pol.step_effect(spec, plan=plan, hw=hw, fabric=fabric)
    entry: dict[str, Any] = {
        "policy": pol.name, "layer_fraction": round(eff.layer_fraction, 4), "ffn_scale": round(eff.ffn_scale, 4),
        "verify_tokens": eff.verify_tokens, "tokens_per_step": None if eff.tokens_per_step is None
        else round(eff.tokens_per_step, 4), "kv_len_scale": round(eff.kv_len_scale, 4),
        "text_per_token": eff.text_per_token, "kv_bytes_scale": round(eff.kv_bytes_scale, 4),
        "extra_operators": [op.name for _, op, _ in eff.extra_ops],
    }
    if hasattr(pol, "table"):
        entry["table"] = pol.table(spec, plan, hw, fabric)
        rows += pol.breakdown_rows(entry["table"])
    return entry
