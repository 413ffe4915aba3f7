"""TensorRT-LLM: `trtllm-serve` (PyTorch backend) per instance, the layout split between its flags and the
YAML it reads with --extra_llm_api_options; several nodes per instance through mpirun and trtllm-llmapi-launch;
disaggregated context/generation servers joined by `trtllm-serve disaggregated --config disagg.yaml`.

Layout in TensorRT-LLM's terms: --tp_size is the ranks of a pipeline stage; attention is tensor-parallel over
all of them, or data-parallel over all of them with `enable_attention_dp` (nothing in between); --ep_size spreads
the experts (MoE TP = tp_size / ep_size). The precision is the checkpoint's (DeepSeek-R1 ships FP8): another
precision needs a pre-quantized checkpoint cmtwin cannot name. No two-microbatch overlap.
"""

from __future__ import annotations

import yaml

from cmtwin.launch.bundle import Bundle, Launch
from cmtwin.launch.engine import Imported, read_args
from cmtwin.launch.view import Inexpressible, LaunchView, Role, check_common

NAME = "trtllm"
COMMAND = ("trtllm-serve",)
PORT = 8001
# The published checkpoints' dtype (others: bf16), and FP8 checkpoints published beside BF16 ones (the model
# cards of Qwen's -FP8 repositories and NVIDIA's ModelOpt FP8 Llama 3.1).
CHECKPOINT_PRECISION = {"deepseek-ai/DeepSeek-R1": "fp8", "moonshotai/Kimi-K2-Instruct": "fp8",
                        "MiniMaxAI/MiniMax-M2": "fp8", "openai/gpt-oss-120b": "mxfp4"}
FP8_CHECKPOINTS = {"Qwen/Qwen3-32B": "Qwen/Qwen3-32B-FP8", "Qwen/Qwen3-235B-A22B": "Qwen/Qwen3-235B-A22B-FP8",
                   "meta-llama/Llama-3.1-8B-Instruct": "nvidia/Llama-3.1-8B-Instruct-FP8",
                   "meta-llama/Llama-3.1-70B-Instruct": "nvidia/Llama-3.1-70B-Instruct-FP8"}


def _checkpoint(model_path: str) -> str:
    if model_path in FP8_CHECKPOINTS.values():
        return "fp8"
    return CHECKPOINT_PRECISION.get(model_path, "bf16")


def checkpoint_for(view: LaunchView) -> str | None:
    """The checkpoint that holds the plan's precision (TensorRT-LLM runs what the checkpoint holds)."""
    if _checkpoint(view.model_path) == view.precision:
        return view.model_path
    if view.precision == "fp8":
        return FP8_CHECKPOINTS.get(view.model_path)
    return None


def check(view: LaunchView) -> None:
    check_common("TensorRT-LLM", view)
    reasons, nearest = [], []
    for r in view.roles:
        if 1 < r.tp < r.world:
            reasons.append(f"{r.section}.tp={r.tp} over {r.world} ranks: attention is tensor-parallel over all ranks "
                           "or data-parallel over all of them (enable_attention_dp)")
            nearest.append(f"{r.section}.tp=1")
        if r.microbatches > 1:
            reasons.append(f"{r.section}.microbatches={r.microbatches}: no two-microbatch overlap")
            nearest.append(f"{r.section}.microbatches=1")
    if checkpoint_for(view) is None:
        reasons.append(f"precision={view.precision}: TensorRT-LLM runs the checkpoint's precision "
                       f"({_checkpoint(view.model_path)} for {view.model_path}) and no {view.precision} checkpoint "
                       "of it is known")
        nearest.append(f"precision={_checkpoint(view.model_path)}")
    if reasons:
        raise Inexpressible("TensorRT-LLM", reasons, nearest)


def extra_options(view: LaunchView, r: Role) -> dict:
    from cmtwin.config.budget import token_budget

    o: dict = {"enable_attention_dp": r.dp > 1}
    if r.role != "prefill":
        o["cuda_graph_config"] = {"enable_padding": True, "max_batch_size": r.batch_per_group}
    if view.kv_cache_dtype == "fp8":
        o["kv_cache_config"] = {"dtype": "fp8"}
    if view.drafts:
        o["speculative_config"] = {"decoding_type": "MTP", "max_draft_len": view.drafts}
    if view.moe and r.redundant:
        o["moe_config"] = {"load_balancer": {"num_slots": view.experts + r.redundant}}
    if r.role == "agg":
        o["enable_chunked_prefill"] = True
    if r.role in ("prefill", "decode"):
        o["cache_transceiver_config"] = {"backend": "DEFAULT"}
    o["max_num_tokens"] = (r.tokens_per_rank * r.tp if r.role == "prefill" else
                           token_budget(view.spec).per_group if r.role == "agg" else None)
    if o["max_num_tokens"] is None:
        del o["max_num_tokens"]
    return o


def export(view: LaunchView) -> Bundle:
    from dataclasses import replace

    check(view)
    view = replace(view, model_path=checkpoint_for(view))
    b = Bundle(NAME, [])
    for r in view.roles:
        extra = f"extra-{r.role}.yaml"
        b.files[extra] = yaml.safe_dump(extra_options(view, r), sort_keys=True)
        a = ["--backend", "pytorch", "--trust_remote_code", "--tp_size", str(r.world), "--pp_size", str(r.pp),
             "--ep_size", str(r.ep if view.moe else 1), "--extra_llm_api_options", extra]
        if r.role != "prefill":
            a += ["--max_batch_size", str(r.batch_per_group)]
        for i in range(r.instances):
            cmd = [*COMMAND, view.model_path, *a, "--host", "0.0.0.0", "--port", str(PORT)]
            if r.nodes > 1:  # one MPI job over the instance's nodes
                cmd = ["mpirun", "--allow-run-as-root", "-H", f"${{{r.role.upper()}_{i}_HOSTS}}", "-np",
                       str(r.ranks), "trtllm-llmapi-launch", *cmd]
            b.launches.append(Launch(r.role, i, 0, tuple(cmd)))
    if view.disaggregated:
        servers = {}
        for key, role in (("context_servers", "prefill"), ("generation_servers", "decode")):
            r = view.role(role)
            servers[key] = {"num_instances": r.instances,
                            "urls": [f"${{{role.upper()}_{i}_ADDR}}:{PORT}" for i in range(r.instances)]}
        b.files["disagg.yaml"] = yaml.safe_dump({"hostname": "0.0.0.0", "port": 8000, "backend": "pytorch",
                                                 **servers}, sort_keys=False)
        b.router = (*COMMAND, "disaggregated", "--config", "disagg.yaml")
    b.notes.append("Set <ROLE>_<i>_ADDR (and <ROLE>_<i>_HOSTS, the mpirun host list, for instances over several "
                   "nodes); disagg.yaml lists the servers the disaggregated frontend joins (substitute the addresses "
                   "before starting it).")
    return b


def parse(argv: list[str], files: dict[str, str] | None = None) -> Imported:
    if "trtllm-serve" in argv:
        argv = argv[argv.index("trtllm-serve"):]
    args = read_args(NAME, argv)
    positional = [t for t in argv[1:2] if not t.startswith("-")]
    checkpoint = positional[0] if positional else ""
    model = {v: k for k, v in FP8_CHECKPOINTS.items()}.get(checkpoint, checkpoint)
    extra_name = args.get("--extra_llm_api_options", "--config")
    extra = {}
    if extra_name:
        text = (files or {}).get(str(extra_name))
        if text is None:
            from cmtwin.errors import ConfigError

            raise ConfigError(f"--extra_llm_api_options {extra_name}: the file is not among the imported ones.",
                              key="--extra_llm_api_options", fix="import the bundle's directory, or give the file too")
        extra = yaml.safe_load(text) or {}
    world = args.int("--tp_size", "--tensor_parallel_size", default=1)
    pp = args.int("--pp_size", "--pipeline_parallel_size", default=1)
    ep = args.int("--ep_size", "--moe_expert_parallel_size", default=1)
    dp = world if extra.get("enable_attention_dp") else 1
    role = "agg" if extra.get("enable_chunked_prefill") else "decode" if "cuda_graph_config" in extra else "prefill"
    if "cache_transceiver_config" not in extra:
        role = "agg"
    spec = extra.get("speculative_config") or {}
    lb = (extra.get("moe_config") or {}).get("load_balancer") or {}
    imp = Imported(role=role, model_path=model, ranks=world * pp, tp=world // dp, ep=ep, moe_tp=world // ep, pp=pp,
                   redundant=0, microbatches=1, drafts=int(spec.get("max_draft_len", spec.get("num_nextn_predict_layers", 0))),
                   precision=_checkpoint(checkpoint),
                   kv_cache_dtype="fp8" if (extra.get("kv_cache_config") or {}).get("dtype") == "fp8" else "bf16",
                   unknown=args.unknown + [k for k in extra if k not in _EXTRA_KEYS])
    imp.redundant = max(0, int(lb.get("num_slots", 0)) - _experts(model)) if lb else 0
    tokens = int(extra.get("max_num_tokens", 0))
    if role != "prefill":
        imp.batch_per_group = args.int("--max_batch_size")
    if role == "prefill":
        imp.tokens_per_rank = tokens // imp.tp
    elif role == "agg" and tokens:
        imp.budget, imp.engine_budget = tokens, "vllm"  # per attention-DP rank, as vLLM scopes it
    return imp


_EXTRA_KEYS = {"enable_attention_dp", "cuda_graph_config", "kv_cache_config", "speculative_config", "moe_config",
               "enable_chunked_prefill", "cache_transceiver_config", "max_num_tokens"}


def _experts(model_path: str) -> int:
    from cmtwin.launch.importer import model_for_path

    m = model_for_path(model_path)
    return m.moe.routed_experts if m is not None and m.moe else 0
