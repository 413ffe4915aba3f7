"""vLLM-Ascend: `vllm serve` with vLLM's flags on Ascend NPUs (every die of a 910C is one NPU to it), W8A8 INT8
through `--quantization ascend` on msModelSlim weights, its own options in --additional-config (expert load
balancing: `eplb_config`), decode graphs through --compilation-config (its DeepSeek-R1 tutorial's
FULL_DECODE_ONLY), and disaggregated prefill/decode over its Mooncake connector. The layout rules are vLLM's
(cmtwin/launch/vllm.py); CloudMatrix-Infer's staged SP-TP-SP prefill MLA has no vLLM-Ascend equivalent.
"""

from __future__ import annotations

from cmtwin.launch import vllm
from cmtwin.launch.bundle import Bundle, dump_json
from cmtwin.launch.engine import Imported, read_args
from cmtwin.launch.view import LaunchView, Role

NAME = "vllm-ascend"
QUANT = {"int8": "ascend"}  # W8A8 weights converted with msModelSlim; bf16: none
CONNECTOR = "MooncakeConnectorV1"  # vllm_ascend/distributed/kv_transfer/kv_p2p/mooncake_connector.py
# W8A8 checkpoints vLLM-Ascend's tutorials load (docs/source/tutorials/models/DeepSeek-R1.md)
INT8_PATHS = {"deepseek-ai/DeepSeek-R1": "vllm-ascend/DeepSeek-R1-W8A8"}


def check(view: LaunchView) -> None:
    vllm.check(view, engine="vLLM-Ascend", int8=True)


def role_args(view: LaunchView, r: Role) -> list[str]:
    a = vllm.role_args(view, r, quantization=QUANT)
    if "--all2all-backend" in a:  # vLLM's backends are CUDA kernels (DeepEP...); vLLM-Ascend picks its own MC2
        i = a.index("--all2all-backend")
        del a[i:i + 2]
    if "--enable-eplb" in a:  # vLLM-Ascend balances experts with its own eplb_config
        a.remove("--enable-eplb")
        i = a.index("--eplb-config")
        del a[i:i + 2]
    if r.role in ("prefill", "decode"):
        i = a.index("--kv-transfer-config")
        a[i + 1] = dump_json({"kv_connector": CONNECTOR,
                              "kv_role": "kv_producer" if r.role == "prefill" else "kv_consumer"})
    if r.role != "prefill":
        a += ["--compilation-config", dump_json({"cudagraph_mode": "FULL_DECODE_ONLY"})]
    if r.redundant:
        a += ["--additional-config", dump_json({"eplb_config": {"dynamic_eplb": True,
                                                                "num_redundant_experts": r.redundant}})]
    return a


def export(view: LaunchView) -> Bundle:
    check(view)
    if view.precision == "int8" and view.model_path in INT8_PATHS:
        from dataclasses import replace

        view = replace(view, model_path=INT8_PATHS[view.model_path])
    b = Bundle(NAME, vllm.launches(view, role_args))
    b.notes.append("Every die is one NPU to vLLM-Ascend: --data-parallel-size and --tensor-parallel-size count dies "
                   "(a CloudMatrix384 node's 8 910C packages are 16 NPUs).")
    vllm.notes(view, b, CONNECTOR)
    return b


def parse(argv: list[str]) -> Imported:
    imp = vllm.parse(argv, engine=NAME, quantization=QUANT)
    imp.model_path = {v: k for k, v in INT8_PATHS.items()}.get(imp.model_path, imp.model_path)
    extra = read_args(NAME, argv).json("--additional-config")
    imp.redundant = int((extra.get("eplb_config") or {}).get("num_redundant_experts", imp.redundant))
    return imp
