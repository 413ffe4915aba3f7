"""Sequence-parallel attention for long prefill: Ring-Attention and TokenRing.

A prompt of S tokens is split over N dies in the causal zigzag layout (die i holds chunks i and 2N-1-i of
S/(2N) tokens, so every die does the same causal work). Attention runs in N steps; in each step a die
computes one block (its S/N queries against S/N keys, half of them masked on average) while the next
block's data moves:
- Ring-Attention passes K/V blocks around a ring, one direction: S/N x (K + V width) bytes per step;
- TokenRing passes query blocks one way and returns (block_out, block_lse) the other way, so both
  directions of the links work at once: the step takes max(Q bytes, out + lse bytes) over the link.
A step takes max(block compute, block transfer) plus the link latency (transfer overlaps compute). With MLA
in MHA form (DeepSeek, 128 heads, K 192 + V 128 per head) a K/V block is larger than a Q block; with
grouped-query attention (few KV heads) the Q block is the larger one and Ring-Attention sends less.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

from pydantic import Field

from cmtwin.config.base import Frozen
from cmtwin.model.arch import MLA
from cmtwin.policy.registry import Policy, registry

REG = registry("sp_attention")


@dataclass(frozen=True)
class SPStep:
    """Per-step figures of one attention layer on one die."""

    send_bytes: float  # bytes one die sends per step in its busier direction
    compute_us: float
    comm_us: float

    @property
    def step_us(self) -> float:
        return max(self.compute_us, self.comm_us)


class SequenceParallelAttention(Protocol):
    """A family member: how blocks move between the SP ranks."""

    def step_bytes(self, model, tokens_per_rank: float) -> float:
        """Bytes a rank sends per step in its busier link direction."""
        ...


class SPParams(Frozen):
    """Parameters shared by the SP attention presets."""

    degrees: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(default=(4, 8, 16, 32), min_length=1)
    """SP degrees (dies) to report."""
    layout: Literal["zigzag"] = "zigzag"
    """Causal load balancing of the chunks (zigzag: die i holds chunks i and 2N-1-i)."""


def _widths(model) -> tuple[int, int, int, int]:
    """(heads, kv_heads, qk width, v width) of the attention in its prefill (MHA) form."""
    att = model.attention
    if isinstance(att, MLA):
        return att.heads, att.heads, att.qk_nope_head_dim + att.qk_rope_head_dim, att.v_head_dim
    return att.heads, att.kv_heads, att.head_dim, att.head_dim


class _SPPolicy(Policy):
    """What the SP presets share: their what-if table over the degrees, and its selected rows in the breakdown."""

    def table(self, spec, plan, hw, fabric) -> list[dict]:
        return sp_prefill_table(spec, plan, hw, fabric, self)

    def breakdown_rows(self, table: list[dict]) -> list:
        from cmtwin.twin.breakdown import Row

        return [Row("sp_prefill", f"{r['policy']} SP{r['degree']}", "attention_blocks", r["attention_ms"] * 1e3,
                    r["bound"], r["degree"]) for r in table if r["selected"]]


@REG.register("ring")
class RingAttention(_SPPolicy):
    """Ring-Attention (Liu et al., 2023): K/V blocks circulate; one link direction carries them."""

    Params = SPParams

    params: SPParams

    def step_bytes(self, model, tokens_per_rank: float) -> float:
        heads, kvh, dqk, dv = _widths(model)
        return tokens_per_rank * kvh * (dqk + dv) * 2.0


@REG.register("tokenring")
class TokenRing(_SPPolicy):
    """TokenRing (2024): Q blocks one way, block outputs and LSEs back the other way, concurrently."""

    Params = SPParams

    params: SPParams

    def step_bytes(self, model, tokens_per_rank: float) -> float:
        heads, kvh, dqk, dv = _widths(model)
        q = tokens_per_rank * heads * dqk * 2.0
        out = tokens_per_rank * heads * (dv * 2.0 + 4.0)  # bf16 block_out + fp32 lse per head
        return max(q, out)


def sp_step(policy, spec, hw, fabric, die_ids, *, prompt_len: int, degree: int) -> SPStep:
    """One step of one attention layer on one die of an SP group of `degree` dies."""
    from cmtwin.model.operators import Op
    from cmtwin.twin import comm
    from cmtwin.twin.cost import op_time

    model = spec.model
    heads, _, dqk, dv = _widths(model)
    t = prompt_len / degree
    flops = 2.0 * heads * t * t * (dqk + dv) * 0.5  # zigzag: every step is half-masked on average
    block = Op("sp_attention_block", "attention_prefill", flops, 0.0, 2.0 * t * heads * (2 * dqk + 2 * dv),
               0.0, spec.prec.attention, max(1, round(t)), t)  # a ring step: t queries over a t-token KV chunk
    compute = op_time(block, hw).us
    nbytes = policy.step_bytes(model, t)
    pl = comm.planes(fabric)
    c = comm.p2p(hw, fabric, die_ids[0], die_ids[1 % len(die_ids)], nbytes=nbytes, plane=pl.intra
                 if fabric.domain_of(die_ids[0]) == fabric.domain_of(die_ids[1 % len(die_ids)]) else pl.inter)
    return SPStep(nbytes, compute, c.us)


def sp_prefill_table(spec, plan, hw, fabric, preset) -> list[dict]:
    """Prefill of one prompt of workload.prompt_len tokens with SP attention over each degree, for every
    registered SP policy: attention time (all layers), the rest of the forward on S/N tokens, and the total."""
    from cmtwin.errors import ConfigError
    from cmtwin.twin.step import prefill_forward

    if not plan.pools_of("prefill"):
        raise ConfigError(f"+policies/sp_attention={preset.name} models the prefill pool's attention, but "
                          f"serving.mode={spec.serving.mode} with prefill.instances={spec.prefill.instances} has no "
                          "prefill pool.", key="policies.sp_attention",
                          fix="use a disaggregated deployment (serving.mode=disagg with prefill.instances >= 1), "
                              "or drop +policies/sp_attention")
    model = spec.model
    prompt = spec.workload.prompt_len
    dies = [r.die for r in plan.dies if r.role == "prefill"] or [r.die for r in plan.dies]
    layers = model.layers + (model.mtp_layers if spec.mtp.draft_tokens else 0)
    rows = []
    for n in preset.params.degrees:
        if n > len(dies) or prompt % n:
            continue
        # The rest of the forward: every operator but the attention core, on this die's S/N tokens.
        rest = prefill_forward(spec, plan, hw, fabric, tokens_per_die=prompt // n, prompt_len=prompt, microbatches=1)
        core = {"mha_attention", "gqa_attention", "sp_all_gather", "tp_all_to_all", "kv_transfer"}
        other_us = sum(r.time_us for r in rest.ledger.rows() if r.operator not in core)
        for name in REG.names():
            policy = REG.build({"name": name, "degrees": [n]})
            step = sp_step(policy, spec, hw, fabric, dies[:n], prompt_len=prompt, degree=n)
            attn_us = layers * n * step.step_us
            rows.append({
                "policy": name, "degree": n, "prompt_len": prompt,
                "bytes_per_step": step.send_bytes, "block_compute_us": round(step.compute_us, 2),
                "block_comm_us": round(step.comm_us, 2), "bound": "comm" if step.comm_us > step.compute_us else "compute",
                "attention_ms": round(attn_us / 1e3, 3), "prefill_ms": round((attn_us + other_us) / 1e3, 3),
                "selected": name == preset.name,
            })
    return rows
