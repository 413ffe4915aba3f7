"""Human output of a prediction: headline figures per phase, the per-operator breakdown, the bottleneck."""

from __future__ import annotations


def render_prediction(con, prediction, *, top: int = 12) -> None:
    from rich.table import Table

    head = Table(title="Prediction (per device = accelerator package)", title_justify="left")
    for col in ("phase", "tokens/s/device", "step ms", "latency", "batch"):
        head.add_column(col, justify="left" if col == "phase" else "right")
    lines = []
    if prediction.prefill:
        p = prediction.prefill
        head.add_row("prefill", f"{p.tokens_per_s_per_device:,.0f}", f"{p.step_ms:,.1f}",
                     f"TTFT {p.ttft_ms:,.1f} ms", f"{p.tokens_per_device:,} tok")
        if p.chunks_per_prompt is None:
            lines.append(f"prefill: KV transfer to decode {p.kv_transfer_ms:.1f} ms per prompt; microbatches "
                         f"{p.microbatches}")
        else:
            lines.append(f"prefill (agg): {p.chunks_per_prompt} chunk(s) of {p.chunk_tokens_per_group:,} tokens per "
                         f"prompt; wait for the step budget {p.budget_wait_ms:,.1f} ms")
    if prediction.decode:
        d = prediction.decode
        head.add_row("decode", f"{d.tokens_per_s_per_device:,.0f}", f"{d.step_ms:,.2f}",
                     f"TPOT {d.tpot_ms:,.2f} ms", f"{d.batch_per_device:g} req")
        hit = (f"; experts read {d.experts_read_per_rank:g} of {d.expert_slots_per_rank} per rank"
               if d.expert_slots_per_rank else "")
        lines.append(f"decode: {d.batch_per_group:,} requests per attention group; {d.tokens_per_step:.2f} tokens/step "
                     f"(MTP drafts {d.mtp_draft_tokens}); KV length {d.kv_len:,}; microbatches {d.microbatches}{hit}")
    con.print(head)
    for line in lines:
        con.print(f"[dim]{line}[/]")
    for note in prediction.notes:
        con.print(f"[dim]{note}[/]")
    for phase in ("prefill", "decode"):
        rows = [r for r in prediction.breakdown if r.phase == phase]
        if not rows:
            continue
        streams: dict[str, float] = {}
        for r in rows:
            streams[r.stream] = streams.get(r.stream, 0.0) + r.time_us
        # a line above the table, not its title (a title wraps to the table's width)
        con.print(f"{phase}: busiest operators per {'forward' if phase == 'prefill' else 'step'}; streams (ms): "
                  + ", ".join(f"{k} {v / 1e3:,.1f}" for k, v in streams.items()))
        t = Table()
        for col in ("stream", "operator", "ms", "bound", "calls"):
            t.add_column(col, justify="right" if col in ("ms", "calls") else "left")
        for r in sorted(rows, key=lambda r: -r.time_us)[:top]:
            t.add_row(r.stream, r.operator, f"{r.time_us / 1e3:,.2f}", r.bound, str(r.calls))
        con.print(t)
    con.print(f"[bold]bottleneck[/]: {prediction.bottleneck}")
    sp = prediction.policies.get("sp_attention")
    if sp:
        t = Table(title=f"Sequence-parallel prefill of one {sp[0]['prompt_len']:,}-token prompt", title_justify="left")
        for col in ("policy", "SP", "MB/step", "block compute us", "block comm us", "bound", "attention ms",
                    "prefill ms"):
            t.add_column(col, justify="left" if col in ("policy", "bound") else "right")
        for r in sp:
            name = f"[bold]{r['policy']}[/]" if r["selected"] else r["policy"]
            t.add_row(name, str(r["degree"]), f"{r['bytes_per_step'] / 2**20:,.1f}", f"{r['block_compute_us']:,.0f}",
                      f"{r['block_comm_us']:,.0f}", r["bound"], f"{r['attention_ms']:,.1f}", f"{r['prefill_ms']:,.1f}")
        con.print(t)
    for family in ("speculation", "layer_skip", "model_routing", "token_transform"):
        eff = prediction.policies.get(family)
        if not eff:
            continue
        t = Table(title=f"policy {family}={eff['policy']}: its effect on the decode step", title_justify="left")
        t.add_column("effect")
        t.add_column("value", justify="right")
        for key in ("layer_fraction", "ffn_scale", "verify_tokens", "tokens_per_step", "kv_len_scale", "text_per_token",
                    "kv_bytes_scale"):
            if eff.get(key) is not None:
                t.add_row(key, f"{eff[key]:g}")
        if eff.get("extra_operators"):
            t.add_row("extra operators", ", ".join(eff["extra_operators"]))
        con.print(t)
        table = eff.get("table")
        if table and len(table) == 1:
            t = Table(title=f"{eff['policy']}: figures", title_justify="left")
            t.add_column("figure")
            t.add_column("value", justify="right")
            for c, v in table[0].items():
                if c != "selected":
                    t.add_row(c, f"{v:,g}" if isinstance(v, (int, float)) else str(v))
            con.print(t)
        elif table:
            t = Table(title=f"{eff['policy']}: candidates (bold: selected)", title_justify="left")
            cols = [c for c in table[0] if c != "selected"]
            for c in cols:
                t.add_column(c, justify="right")
            for r in table:
                cells = [f"{r[c]:,g}" if isinstance(r[c], (int, float)) else str(r[c]) for c in cols]
                t.add_row(*([f"[bold]{x}[/]" for x in cells] if r["selected"] else cells))
            con.print(t)
    bat = prediction.policies.get("batching")
    if bat:
        fig = bat["table"][0]
        t = Table(title=f"policy batching={bat['policy']}: the offline batch of {fig['requests']:,} requests "
                        "(twin estimate; `cmtwin simulate` measures it)", title_justify="left")
        t.add_column("figure")
        t.add_column("value", justify="right")
        for c, v in fig.items():
            if c not in ("policy", "requests"):
                t.add_row(c, f"{v:,}" if isinstance(v, int) else f"{v:,g}")
        con.print(t)
