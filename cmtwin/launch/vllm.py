"""vLLM: `vllm serve` per node of each instance (data-parallel ranks spread over nodes with
--data-parallel-size-local, tensor/pipeline groups larger than a node on a Ray cluster), disaggregated
prefill/decode over a KV connector (--kv-transfer-config) behind a PD proxy.

Layout in vLLM's terms: --tensor-parallel-size is attention TP, --data-parallel-size attention DP, and the experts
of a MoE model form one group of tp x dp ranks per pipeline stage: expert-parallel with --enable-expert-parallel
(EP = tp x dp, MoE-TP 1), else tensor-parallel (MoE-TP = tp x dp, EP 1). Mixed EP x MoE-TP layouts, the staged
SP-TP-SP MLA and dedicated shared-expert ranks are not expressible; INT8 needs a W8A8 checkpoint, which cmtwin
cannot name.
"""

from __future__ import annotations

from cmtwin.launch.bundle import Bundle, Launch, dump_json
from cmtwin.launch.engine import Imported, known_flags, read_args
from cmtwin.launch.view import Inexpressible, LaunchView, Role, check_common

NAME = "vllm"
GPU_QUANT = {"fp8": "fp8", "mxfp4": "mxfp4", "fp4": "modelopt_fp4"}  # --quantization per precision (bf16: none)
COMMAND = ("vllm", "serve")
PORT = 8000
RPC_PORT = 13345


def check(view: LaunchView, engine: str = "vLLM", int8: bool = False) -> None:
    check_common(engine, view)
    reasons, nearest = [], []
    for r in view.roles:
        if view.moe and r.ep > 1 and r.moe_tp > 1:
            reasons.append(f"{r.section}.ep={r.ep} with {r.section}.moe_tp={r.moe_tp}: {engine} spreads the experts "
                           "over all tp x dp ranks of a stage, either expert-parallel or tensor-parallel")
            nearest += [f"{r.section}.ep={r.world}", f"{r.section}.moe_tp=1"]
            if r.redundant:  # the slots must still divide over the wider EP group
                slots = -(-(view.experts + r.redundant) // r.world) * r.world
                nearest.append(f"{r.section}.redundant_experts={slots - view.experts}")
        if r.microbatches > 1 and "--enable-dbo" not in known_flags(NAME):
            reasons.append(f"{r.section}.microbatches={r.microbatches}: no two-microbatch overlap in this vLLM")
            nearest.append(f"{r.section}.microbatches=1")
    if view.precision == "int8" and not int8:
        reasons.append("precision=int8 needs a W8A8 INT8 checkpoint (vLLM reads the quantization from it)")
        nearest.append("precision=fp8")
    if reasons:
        raise Inexpressible(engine, reasons, nearest)


def role_args(view: LaunchView, r: Role, *, quantization: dict[str, str] | None = None) -> list[str]:
    from cmtwin.config.budget import token_budget

    a = ["--trust-remote-code", "--tensor-parallel-size", str(r.tp), "--data-parallel-size", str(r.dp)]
    if r.pp > 1:
        a += ["--pipeline-parallel-size", str(r.pp)]
    if view.moe and r.ep > 1:
        a += ["--enable-expert-parallel"]
        if r.tp < r.world and "--all2all-backend" in known_flags(NAME):
            a += ["--all2all-backend", "deepep_high_throughput" if r.role == "prefill" else "deepep_low_latency"]
    if r.redundant:
        a += ["--enable-eplb", "--eplb-config", dump_json({"num_redundant_experts": r.redundant})]
    if view.drafts:
        a += ["--speculative-config", dump_json({"method": "deepseek_mtp", "num_speculative_tokens": view.drafts})]
    q = (quantization or GPU_QUANT).get(view.precision)
    if q:
        a += ["--quantization", q]
    if view.kv_cache_dtype == "fp8":
        a += ["--kv-cache-dtype", "fp8"]
    if r.role != "prefill":
        a += ["--max-num-seqs", str(r.batch_per_group)]
    if r.role == "prefill":
        a += ["--max-num-batched-tokens", str(r.tokens_per_rank * r.tp)]
    elif r.role == "agg":
        a += ["--max-num-batched-tokens", str(token_budget(view.spec).per_group)]
    if r.microbatches > 1:
        a += ["--enable-dbo"]
    if r.role in ("prefill", "decode"):
        a += ["--kv-transfer-config", dump_json({"kv_connector": "NixlConnector",
                                                "kv_role": "kv_producer" if r.role == "prefill" else "kv_consumer"})]
    return a


def launches(view: LaunchView, role_args_of, command=COMMAND) -> list[Launch]:
    """Per role, instance and node: DP ranks spread over the nodes (node 0 serves the API, the others run
    --headless); a TP x PP group larger than a node runs on a Ray cluster started from node 0."""
    out = []
    for r in view.roles:
        base = role_args_of(view, r)
        group = r.tp * r.pp
        for i in range(r.instances):
            addr = f"${{{r.role.upper()}_{i}_ADDR}}"
            if group > r.ranks_per_node:  # one engine over several nodes: Ray
                for k in range(r.nodes):
                    if k:
                        out.append(Launch(r.role, i, k, ("ray", "start", f"--address={addr}:6379", "--block")))
                    else:
                        out.append(Launch(r.role, i, 0, (*command, view.model_path, *base,
                                                         "--distributed-executor-backend", "ray",
                                                         "--host", "0.0.0.0", "--port", str(PORT))))
                continue
            local = max(1, r.ranks_per_node // group)
            for k in range(r.nodes):
                a = [*command, view.model_path, *base]
                if r.nodes > 1:
                    a += ["--data-parallel-size-local", str(local), "--data-parallel-address", addr,
                          "--data-parallel-rpc-port", str(RPC_PORT)]
                    if k:
                        a += ["--headless", "--data-parallel-start-rank", str(k * local)]
                a += ["--host", "0.0.0.0", "--port", str(PORT)]
                out.append(Launch(r.role, i, k, tuple(a)))
    return out


def notes(view: LaunchView, b: Bundle, connector: str) -> None:
    """What the user must do besides running the scripts (vLLM and vLLM-Ascend)."""
    b.notes.append("Set <ROLE>_<i>_ADDR to the address of node 0 of each instance.")
    if any(x.argv[:2] == ("ray", "start") for x in b.launches):
        b.notes.append("A tensor/pipeline group larger than a node runs on Ray: on node 0 run `ray start --head "
                       "--port 6379` before its script; the other nodes' scripts join it.")
    if view.disaggregated:
        b.notes.append(f"Prefill and decode instances exchange KV over {connector} (--kv-transfer-config); put a "
                       "PD proxy in front (vLLM's examples/online_serving/disaggregated_serving) that sends each "
                       "request to a prefill instance, then to a decode instance.")
    elif sum(r.instances for r in view.roles) > 1:
        b.notes.append("Several instances: put a load balancer in front of their API servers.")


def export(view: LaunchView) -> Bundle:
    check(view)
    b = Bundle(NAME, launches(view, role_args))
    notes(view, b, "NIXL")
    return b


def parse(argv: list[str], engine: str = NAME, quantization: dict[str, str] | None = None) -> Imported:
    args = read_args(engine, argv)
    positional = [t for t in argv[2:3] if not t.startswith("-")]
    model = args.get("--model", default=positional[0] if positional else "")
    tp = args.int("--tensor-parallel-size", default=1)
    dp = args.int("--data-parallel-size", default=1)
    pp = args.int("--pipeline-parallel-size", default=1)
    world = tp * dp
    ep_on = args.flag("--enable-expert-parallel")
    kv_role = args.json("--kv-transfer-config").get("kv_role")
    role = {"kv_producer": "prefill", "kv_consumer": "decode"}.get(kv_role, "agg")
    spec_cfg = args.json("--speculative-config")
    quant = {v: k for k, v in (quantization or GPU_QUANT).items()}
    imp = Imported(role=role, model_path=model, ranks=world * pp, tp=tp, ep=world if ep_on else 1,
                   moe_tp=1 if ep_on else world, pp=pp,
                   redundant=int(args.json("--eplb-config").get("num_redundant_experts", 0)) if args.flag("--enable-eplb") else 0,
                   microbatches=2 if args.flag("--enable-dbo") else 1,
                   drafts=int(spec_cfg.get("num_speculative_tokens", 0)),
                   precision=quant.get(args.get("--quantization"), "bf16"),
                   kv_cache_dtype=args.kv_cache_dtype(),
                   unknown=args.unknown)
    batched = args.int("--max-num-batched-tokens", default=0)
    if role != "prefill":
        imp.batch_per_group = args.int("--max-num-seqs")
    if role == "prefill":
        imp.tokens_per_rank = batched // tp
    elif role == "agg" and batched:
        imp.budget, imp.engine_budget = batched, "vllm"
    return imp
