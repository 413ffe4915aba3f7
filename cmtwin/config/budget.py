"""The step budget of aggregated serving, as engines set it: one token budget per engine step shared by the
running decodes and the prefill chunks (`serving.max_batched_tokens`, else the engine's default for the device),
scoped as the engine scopes it: SGLang divides --chunked-prefill-size over the DP-attention groups
(server_args.py, `_handle_data_parallelism`: `chunked_prefill_size //= dp_size`); vLLM runs one engine core per DP
rank, each with the whole --max-num-batched-tokens. The twin's use of it: cmtwin/twin/agg.py."""

from __future__ import annotations

from dataclasses import dataclass

ENGINE_DEFAULTS = {
    "sglang": ("SGLang server_args.py `_handle_gpu_memory_settings`: --chunked-prefill-size 2048 below 35 GiB "
               "per device, 8192 below 160 GiB (H100, H200, H20), 16384 above (B200, MI300); divided by dp_size "
               "under --enable-dp-attention"),
    "vllm": ("vLLM vllm/engine/arg_utils.py `EngineArgs.get_batch_defaults`: --max-num-batched-tokens 8192 for "
             "the OpenAI server on devices of 70 GiB or more (not A100), else 2048; per engine core (DP rank)"),
}


def engine_default_budget(engine: str, device_gib: float) -> int:
    """The engine's default step budget for one instance on a device of `device_gib` GiB (ENGINE_DEFAULTS)."""
    if engine == "sglang":
        return 2048 if device_gib < 35 else 8192 if device_gib < 160 else 16384
    return 8192 if device_gib >= 70 else 2048


@dataclass(frozen=True)
class Budget:
    per_group: int  # tokens per step of one attention group's scheduler
    flag: int  # the engine flag's value (per instance for SGLang, per DP rank for vLLM)
    source: str  # "serving.max_batched_tokens" or the engine default's source
    label: str  # how it was set, in a few words


def token_budget(spec) -> Budget:
    """The per-step token budget of one attention group."""
    s = spec.serving
    # an engine sees each die as a device (a 910C's two dies are two NPUs to vLLM-Ascend and SGLang)
    flag = s.max_batched_tokens or engine_default_budget(s.engine, spec.hardware.die.memory_gib.value)
    source = "serving.max_batched_tokens" if s.max_batched_tokens else ENGINE_DEFAULTS[s.engine]
    groups = spec.decode_groups
    per_group = max(1, flag // groups) if s.engine == "sglang" else flag
    how = "serving.max_batched_tokens" if s.max_batched_tokens else f"{s.engine}'s default for the device"
    label = f"{flag:,} ({how}) / {groups} DP groups" if per_group != flag else f"{flag:,} ({how})"
    return Budget(per_group, flag, source, label)
