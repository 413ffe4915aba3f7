"""SGLang: `python -m sglang.launch_server` per node of each instance; disaggregated prefill/decode joined by
`python -m sglang_router.launch_router --pd-disaggregation`.

Layout in SGLang's terms: --tp-size is the ranks of a pipeline stage; --dp-size with --enable-dp-attention splits
attention into that many data-parallel groups (attention TP = tp_size / dp_size); --ep-size spreads the experts
(MoE TP = tp_size / ep_size). Every layout cmtwin plans on GPUs is expressible except the staged SP-TP-SP MLA and
ranks holding only the shared expert.
"""

from __future__ import annotations

from cmtwin.launch.bundle import Bundle, Launch
from cmtwin.launch.engine import Imported, read_args
from cmtwin.launch.view import LaunchView, Role, check_common

NAME = "sglang"
COMMAND = ("python", "-m", "sglang.launch_server")
ROUTER = ("python", "-m", "sglang_router.launch_router")
PORT = 30000
QUANT = {"fp8": "fp8", "int8": "w8a8_int8", "mxfp4": "mxfp4", "fp4": "modelopt_fp4"}  # --quantization (bf16: none)


def check(view: LaunchView) -> None:
    check_common("SGLang", view)


def _budget_flag(view: LaunchView, r: Role) -> int:
    """--chunked-prefill-size: per instance, divided by SGLang over the DP-attention groups."""
    from cmtwin.config.budget import token_budget

    if r.role == "prefill":
        return r.tokens_per_rank * r.world  # a forward's tokens over the stage's ranks
    return token_budget(view.spec).per_group * (r.dp if r.dp > 1 else 1)


def role_args(view: LaunchView, r: Role) -> list[str]:
    a = ["--model-path", view.model_path, "--trust-remote-code", "--tp-size", str(r.world)]
    if r.pp > 1:
        a += ["--pp-size", str(r.pp)]
    if r.dp > 1:
        a += ["--dp-size", str(r.dp), "--enable-dp-attention"]
    if view.moe and r.ep > 1:
        a += ["--ep-size", str(r.ep)]
        if r.tp < r.world:  # tokens spread over the ranks: all-to-all dispatch/combine (DeepEP)
            a += ["--moe-a2a-backend", "deepep", "--deepep-mode",
                  {"prefill": "normal", "decode": "low_latency"}.get(r.role, "auto")]
    if r.redundant:
        a += ["--enable-eplb", "--ep-num-redundant-experts", str(r.redundant)]
    if view.drafts:
        a += ["--speculative-algorithm", "EAGLE", "--speculative-num-steps", str(view.drafts),
              "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", str(view.drafts + 1)]
    if view.precision in QUANT:
        a += ["--quantization", QUANT[view.precision]]
    if view.kv_cache_dtype == "fp8":
        a += ["--kv-cache-dtype", "fp8_e4m3"]
    if r.role != "prefill":
        a += ["--max-running-requests", str(r.max_running), "--cuda-graph-max-bs-decode", str(r.batch_per_group)]
    if r.role != "decode":
        a += ["--chunked-prefill-size", str(_budget_flag(view, r))]
    if r.microbatches > 1:
        a += ["--enable-two-batch-overlap"]
    if r.role in ("prefill", "decode"):
        a += ["--disaggregation-mode", r.role, "--disaggregation-transfer-backend", "mooncake"]
    return a


def export(view: LaunchView) -> Bundle:
    check(view)
    launches = []
    for r in view.roles:
        base = role_args(view, r)
        for i in range(r.instances):
            for k in range(r.nodes):
                a = list(base)
                if r.nodes > 1:
                    a += ["--nnodes", str(r.nodes), "--node-rank", str(k), "--dist-init-addr",
                          f"${{{r.role.upper()}_{i}_ADDR}}:5000"]
                a += ["--host", "0.0.0.0", "--port", str(PORT)]
                launches.append(Launch(r.role, i, k, (*COMMAND, *a)))
    b = Bundle(NAME, launches)
    urls = {r.role: [f"http://${{{r.role.upper()}_{i}_ADDR}}:{PORT}" for i in range(r.instances)] for r in view.roles}
    if view.disaggregated:
        router = [*ROUTER, "--pd-disaggregation"]
        for u in urls["prefill"]:
            router += ["--prefill", u]
        for u in urls["decode"]:
            router += ["--decode", u]
        b.router = (*router, "--host", "0.0.0.0", "--port", "8000")
    elif sum(r.instances for r in view.roles) > 1:
        b.router = (*ROUTER, "--worker-urls", *next(iter(urls.values())), "--host", "0.0.0.0", "--port", "8000")
    b.notes.append("Set <ROLE>_<i>_ADDR to the address of node 0 of each instance (its --dist-init-addr and the "
                   "router's URL). Disaggregation moves KV over Mooncake (--disaggregation-transfer-backend).")
    return b


def parse(argv: list[str]) -> Imported:
    if "sglang.launch_server" in argv:
        argv = argv[argv.index("sglang.launch_server") + 1:]
    args = read_args(NAME, argv)
    model = args.get("--model-path", "--model", default="")
    world = args.int("--tp-size", default=1)
    pp = args.int("--pp-size", default=1)
    dp = args.int("--dp-size", default=1) if args.flag("--enable-dp-attention") else 1
    ep = args.int("--ep-size", default=1)
    mode = args.get("--disaggregation-mode", default="null")
    role = mode if mode in ("prefill", "decode") else "agg"
    drafts = args.int("--speculative-num-steps") if args.get("--speculative-algorithm") else 0
    quant = args.get("--quantization")
    precision = {v: k for k, v in QUANT.items()}.get(quant, "bf16")
    chunk = args.int("--chunked-prefill-size", default=0)
    imp = Imported(role=role, model_path=model, ranks=world * pp, tp=world // dp, ep=ep, moe_tp=world // ep, pp=pp,
                   redundant=args.int("--ep-num-redundant-experts"),
                   microbatches=2 if args.flag("--enable-two-batch-overlap") else 1, drafts=drafts,
                   precision=precision, kv_cache_dtype=args.kv_cache_dtype(), unknown=args.unknown)
    if role != "prefill":
        imp.batch_per_group = args.int("--max-running-requests") // dp
    if role == "prefill":
        imp.tokens_per_rank = chunk // world
    elif role == "agg" and chunk:
        imp.budget, imp.engine_budget = chunk, NAME
    return imp
