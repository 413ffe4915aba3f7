"""Human output of `cmtwin plan`: pools, parallelism, expert placement, memory per die, prediction."""

from __future__ import annotations

from cmtwin.cli.common import console, gib


def render_plan(spec, plan, prediction=None, *, run_id=None, elapsed_s: float | None = None) -> None:
    from rich.table import Table

    con = console()
    title = f"[bold]{plan.deployment}[/]: {plan.model} on {plan.topology} ({plan.hardware}, {plan.precision})"
    con.print(title)
    con.print(f"plan {plan.plan_hash} · devices used {plan.devices_used} of {plan.devices_total} "
              f"({plan.dies_per_device} dies per device)")

    pools = Table(title="Pools and parallelism", title_justify="left")
    for col in ("pool", "inst", "devices", "dies", "nodes", "EP", "TP", "DP", "exp/die", "tok/die"):
        pools.add_column(col, justify="right" if col != "pool" else "left")
    seen: dict[str, list] = {}
    for p in plan.pools:
        seen.setdefault(p.role, []).append(p)
    for role, ps in seen.items():
        p = ps[0]
        nodes = f"{min(ps[0].nodes)}-{max(ps[-1].nodes)}" if p.nodes else "-"
        epd = str(p.placement.experts_on_rank(0)) if p.placement.ep and spec.model.is_moe else "-"
        pools.add_row(role, str(len(ps)), str(p.devices), str(p.dies), nodes, str(p.ep), str(p.tp), str(p.dp),
                      epd, f"{p.tokens_per_die:,.4g}")
    if plan.caching:
        c = plan.caching
        pools.add_row("caching", "1", f"{c.cpus} CPU", "-", f"{c.nodes}", "-", "-", "-", "-", "-")
    con.print(pools)
    if plan.caching:
        c = plan.caching
        con.print(f"caching pool (EMS): {c.cpus} host CPUs on {c.nodes} nodes, {c.capacity_bytes / 2**40:,.1f} TiB of "
                  f"DRAM = {c.blocks:,} KV blocks of {c.block_tokens} tokens")

    if spec.model.is_moe:
        rows = []
        for role, ps in seen.items():
            s = ps[0].placement.summary()
            shared = f"{s['dedicated_shared_ranks']} ranks" if s["dedicated_shared_ranks"] else s["shared_expert"]
            rows.append((role, str(s["ep"]), str(s["routed_ranks"]), shared, str(s["routed_slots"]),
                         str(s["routed_slots_per_rank"]), str(s["replicated_experts"]),
                         f"{s['max_over_mean_rank_load']:.3f}"))
        ex = Table(title="Expert placement", title_justify="left")
        cols = ("pool", "EP", "routed ranks", "shared expert", "slots", "slots per rank", "replicas", "max/mean load")
        wide = sum(max(len(col), *(len(row[k]) for row in rows)) + 3 for k, col in enumerate(cols)) < con.width
        for k, col in enumerate(cols):
            # on a narrow terminal the headers wrap at their spaces and every cell stays whole
            width = None if wide else max(*map(len, col.split()), *(len(row[k]) for row in rows))
            ex.add_column(col, justify="right" if k else "left", width=width)
        for row in rows:
            ex.add_row(*row)
        con.print(ex)

    mem = Table(title=f"Memory per die (GiB of {spec.hardware.die.memory_gib.value:g})", title_justify="left")
    mem.add_column("part")
    cols = []
    for role, ps in seen.items():
        for kind, m in ps[0].memory_by_kind.items():
            cols.append(m)
            mem.add_column(f"{role}/{kind}", justify="right")
    names = [r[0] for r in cols[0].rows()] if cols else []
    for i, name in enumerate(names):
        mem.add_row(name, *(gib(m.rows()[i][1]) for m in cols))
    mem.add_row("[bold]used[/]", *(f"[bold]{gib(m.used / 2**30)}[/]" for m in cols))
    mem.add_row("free", *(gib((m.capacity - m.used) / 2**30) for m in cols))
    mem.add_row("KV token capacity", *(f"{m.kv_token_capacity:,}" for m in cols))
    con.print(mem)

    if prediction is not None:
        from cmtwin.cli.render_prediction import render_prediction

        render_prediction(con, prediction)
    tail = []
    if run_id is not None:
        tail.append(f"recorded as run {run_id}")
    if elapsed_s is not None:
        tail.append(f"{elapsed_s:.2f} s")
    if tail:
        con.print("[dim]" + " · ".join(tail) + "[/]")
