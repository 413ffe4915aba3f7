"""Break each twin mechanism by hand, run the twin's tests, and list the tests that catch it (issue 18).

usage: python .ci/twin_breakages.py        (from the repository root; restores every file it edits)

Each breakage is one literal edit of the twin; a mechanism whose breakage no test catches would be unguarded.
Not run by CI (it edits source files); run it after changing the twin's tests.
"""
import subprocess, pathlib, sys
B = [
 ("a drop prefill pipeline bubble", "cmtwin/twin/step.py", "forward_us=step)", "forward_us=0.0)"),
 ("b drop decode PP time", "cmtwin/twin/step.py", "    step += pipeline(ctx, nbytes=b * verify * tp * model.hidden * ctx.act_bytes)[0]", "    step += 0 * pipeline(ctx, nbytes=b * verify * tp * model.hidden * ctx.act_bytes)[0]"),
 ("c LM head unsplit under TP", "cmtwin/twin/step.py", "step += head(ctx, tokens=b * verify * tp, vocab_share=1 / tp)", "step += head(ctx, tokens=b * verify * tp, vocab_share=1.0)"),
 ("d routing noise zero", "cmtwin/twin/blocks.py", "noise=spec.placement.balance == \"default\")", "noise=False)"),
 ("e always the routed expert rank", "cmtwin/twin/load.py", "    return routed if time_of(routed) >= time_of(shared) else shared", "    return routed"),
 ("f no de-duplication of dispatch copies", "cmtwin/twin/load.py", "        send = tokens_per_rank * distinct\n", "        send = tokens_per_rank * moe.experts_per_token\n"),
 ("g drop agg prefill-chunk attention", "cmtwin/twin/blocks.py", "            + [o for o in prefill if o.name in _CHUNK_OPS])", "            + [])"),
 ("h no overlap schedule (serial)", "cmtwin/twin/blocks.py", "    step = sched.layers_time(groups, m)\n", "    step = sum(n * m * sum(us for _, us in ph) for n, ph in groups)\n"),
 ("i MTP series -> 1 + k a", "cmtwin/config/schema.py", "    return (1 - a ** (k + 1)) / (1 - a)\n", "    return 1 + k * a\n"),
 ("j SLO search capped at 32", "cmtwin/twin/slo.py", "<= tpot_ms, 1, hi)", "<= tpot_ms, 1, min(hi, 32))"),
]
failed_any = []
for name, f, old, new in B:
    p = pathlib.Path(f); s = p.read_text()
    assert s.count(old) == 1, (name, s.count(old))
    p.write_text(s.replace(old, new))
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:randomly", "tests/test_twin_mechanisms.py",
                            "tests/test_pinned_predictions.py", "tests/test_twin.py", "tests/test_layouts.py"],
                           capture_output=True, text=True)
        failed = sorted({l.split(" ")[1].split("[")[0].replace("tests/", "") for l in r.stdout.splitlines() if l.startswith("FAILED")})
        print(f"{name}: {len(failed)} failing test functions: {', '.join(failed)}", flush=True)
        if not failed:
            failed_any.append(name)
    finally:
        p.write_text(s)
if failed_any:
    sys.exit(f"no test catches: {', '.join(failed_any)}")
