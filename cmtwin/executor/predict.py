"""Predicted times of the executed operators: the twin's own cost model (cmtwin.twin.cost.op_time) on the
catalogue (cmtwin.model.operators) at the executed shapes, with the selected hardware profile."""

from __future__ import annotations

from cmtwin.model import operators as O
from cmtwin.twin.cost import op_time


def catalogue_ops(model, prec, *, phase: str, tokens: int, kv_len: int, dense: bool, loads=None,
                  shared_tokens: int = 0, head: bool = False, mtp: bool = False) -> list:
    """The catalogue's operators of one rank's layer (or of the LM head) at the executed shapes."""
    if head:
        return O.lm_head_ops(model, prec, tokens=tokens)
    ops = O.mtp_extra_ops(model, prec, tokens=tokens) if mtp else []
    if phase == "decode":
        ops += O.attention_ops(model, prec, tokens=tokens, requests=tokens, kv_len=kv_len + 1, form="absorbed")
    else:
        ops += O.attention_ops(model, prec, tokens=tokens, requests=1, kv_len=tokens, form="mha")
    if dense:
        return ops + O.dense_mlp_ops(model, prec, tokens=tokens)
    ops += O.router_ops(model, prec, tokens=tokens)
    # The executor runs a rank's routed experts as one GEMM per expert (layers.experts), so its operators are
    # the experts' own: a rank of nine experts pays nine launches, a rank of one (EP320 decode) one.
    for x in loads or ():
        if x:
            ops += O.expert_ops(model, prec, tokens_per_expert=[x], name="routed_experts")
    if shared_tokens:
        ops += O.expert_ops(model, prec, tokens_per_expert=[shared_tokens] * max(1, model.moe.shared_experts),
                            name="shared_expert")
    return ops


def predicted_ops(run, *, tokens: int, layer: int, loads=None, shared_tokens: int = 0, head: bool = False) -> dict:
    if run.hw_pred is None:
        return {}
    dense = (not head) and run.W.layers[layer].dense
    mtp = (not head) and run.W.layers[layer].mtp
    ops = catalogue_ops(run.model, run.prec, phase=run.phase, tokens=tokens, kv_len=run.ex.kv_len, dense=dense,
                        loads=loads, shared_tokens=shared_tokens, head=head, mtp=mtp)
    out: dict[str, float] = {}
    for op in ops:  # an operator per expert: the rank's total under the executor's name
        out[op.name] = out.get(op.name, 0.0) + op_time(op, run.hw_pred).us
    return out
