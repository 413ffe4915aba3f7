"""Published figures, transcribed from the papers and READMEs each `source` names.

Two kinds, kept apart on purpose:
- OPERATOR tables: what the twin is calibrated on (rule 2: calibrate on operators);
- HEADLINES: whole-deployment results, used ONLY by `cmtwin validate` to report the twin's error.
  Nothing in cmtwin/twin reads HEADLINES to set a constant.
"""

from __future__ import annotations

PAPER = "arXiv 2506.12708 (CloudMatrix384 paper)"

# MoE dispatch / combine on CM384 UB, 128 tokens per rank, INT8 dispatch (7.5 KB/token), BF16 combine
# (14 KB/token), top-8 of 256 experts. Paper Table 6 (v3).
CM384_DISPATCH_COMBINE = {
    "source": f"{PAPER} Table 6 (v3): dispatch/combine at 128 tokens per rank",
    "tokens": 128,
    "rows": [  # ep, dispatch_us, combine_us
        (8, 116.0, 118.0),
        (16, 131.0, 132.0),
        (32, 133.0, 146.0),
        (64, 141.0, 150.0),
        (128, 152.0, 150.0),
        (256, 152.0, 149.0),
    ],
}

# Other Ascend A3 dispatch/combine measurements (DeepEP-Ascend kernels, sgl-project/sgl-kernel-npu), not the
# paper's kernels: checks of the fixed-plus-per-token split fitted on Table 6, not calibration inputs.
A3_DEEPEP_LL_128 = {
    "group": "ascend_910c DeepEP-Ascend dispatch and combine (not calibrated on)",
    "source": "sgl-project/sgl-kernel-npu README.md @ b2e93094: DeepEP-Ascend low-latency, A3 384 SuperPOD, 128 "
              "tokens per rank, INT8 dispatch / BF16 combine",
    "tokens": 128,
    "rows": [(8, 132.0, 126.0), (16, 139.0, 135.0), (32, 153.0, 151.0)],
}
A3_SMALL_BATCH_32 = {
    "group": "ascend_910c small-batch dispatch and combine (32 tokens, not calibrated on)",
    "source": "sgl-project/sgl-kernel-npu python/deep_ep/doc/FUSED_DEEP_MOE_EN.md @ 4e604f8c: batch 32, dispatch "
              "80 us, combine 75 us (platform and EP not stated: shown at EP8-32, the range of the same repository's "
              "A3 tables, unjudged)",
    "tokens": 32,
    "rows": [(8, 80.0, 75.0), (16, 80.0, 75.0), (32, 80.0, 75.0)],
}

# NCCL collectives on H100 at small messages: the 1 KB / 2 KiB points set the profiles' fixed costs
# (conf/hardware/h100_sxm.yaml collectives.all_reduce / all_gather / all_to_all); the other sizes check the split.
NCCL_ALL_REDUCE_H100 = {
    "group": "h100_sxm NCCL all-reduce (fixed cost from the 1 KB point)",
    "source": "microsoft/mscclpp docs/dsl/figs/single_node_allreduce_results_1K_to_1M.png and "
              "2node_all_reduce_results.png (NCCL, H100, read from the figures)",
    "rows": [  # ranks, bytes, us
        (8, 1024, 15.0), (8, 16384, 16.0), (8, 131072, 18.2), (8, 1048576, 24.0),
        (16, 1024, 35.3), (16, 16384, 45.4), (16, 131072, 50.3), (16, 1048576, 89.0),
    ],
}
NCCL_AG_A2A_H100 = {
    "group": "h100_sxm NCCL all-gather / all-to-all, 8 GPUs (fixed cost from the 2 KiB point)",
    "source": "sgl-project/sglang benchmark/kernels/all_reduce/bench_symm.sh @ 8e17681e (H100 8-GPU, bf16, eager NCCL)",
    "rows": [  # kind, bytes, us
        ("all_gather", 2048, 14.57), ("all_gather", 32768, 14.37), ("all_gather", 131072, 18.14),
        ("all_to_all", 2048, 18.34), ("all_to_all", 32768, 17.90), ("all_to_all", 131072, 21.18),
    ],
}

# INT8 grouped GEMM on one 910C die (INT8 in, BF16 out). Paper §5 table.
CM384_INT8_GROUPED_GEMM = {
    "source": f"{PAPER} INT8 grouped GEMM table",
    "rows": [  # groups, m, n, k, compute utilisation
        (4, 7168, 4096, 4096, 0.794),
        (4, 2048, 7168, 4096, 0.774),
        (4, 7168, 4096, 8192, 0.827),
        (4, 2048, 7168, 8192, 0.811),
        (8, 7168, 4096, 4096, 0.796),
        (8, 2048, 7168, 4096, 0.779),
    ],
}

CM384_MLA = {
    "source": f"{PAPER} MLA kernel: 65.4% of peak compute when compute-bound, 84.1% of bandwidth (1,346 of 1,600 GB/s)",
    "compute": 0.654,
    "memory": 0.841,
}

CM384_UB = {
    "source": f"{PAPER} v2 Table 1: UB per die one way, 512-byte latency",
    "npu_write_inter_GB_per_s": 135.0,
    "npu_write_intra_GB_per_s": 137.0,
    "npu_read_inter_GB_per_s": 164.0,
    "npu_read_intra_GB_per_s": 167.0,
    "link_GB_per_s": 196.0,  # 7 x 224 Gbps
}

# DeepEP V1 low-latency kernels on H800 + CX7 400 Gb/s, 128 tokens, top-8, FP8 dispatch, BF16 combine:
# the 2025-06-05 values (NVLink used where possible; DeepEP commit d8dd185, PR #173).
DEEPEP_LL_H800 = {
    "source": "DeepEP README / docs/legacy.md, low-latency kernels, 2025-06-05 values (github.com/deepseek-ai/DeepEP)",
    "tokens": 128,
    "rows": [  # ep, dispatch_us, combine_us
        (8, 77.0, 114.0),
        (16, 118.0, 195.0),
        (32, 155.0, 273.0),
        (64, 173.0, 314.0),
        (128, 192.0, 369.0),
        (256, 194.0, 360.0),
    ],
}

# DeepEP's normal kernels (prefill): a token crosses InfiniBand once per destination node, to the GPU of the same
# index there, which forwards it over NVLink to the destination GPUs. 4,096 tokens per rank, hidden 7168, top-8,
# FP8 dispatch (7,168 x (1 + 4/128) bytes a token), BF16 combine (shared/reference/gpu_oplevel.md 4.1). How the
# table counts (DeepEP tests/test_internode.py): the benchmark groups the experts by node and routes each token to
# its top-min(4, nodes) node groups; an RDMA row is tokens x destination nodes (its own node included) x bytes
# over the time, an NVLink row (EP8, one node) the bytes a rank receives over the time.
DEEPEP_NORMAL_H800 = {
    "source": "DeepEP README / docs/legacy.md, normal kernels, values after 2025-04-22 (commit 3b1045d), H800 + "
              "CX7 400 Gb/s (github.com/deepseek-ai/DeepEP)",
    "tokens": 4096,
    "rows": [  # ep, dispatch GB/s, combine GB/s (NVLink at EP8, RDMA beyond)
        (8, 153.0, 158.0),
        (16, 43.0, 43.0),
        (32, 58.0, 57.0),
        (64, 51.0, 50.0),
    ],
}

# MoE dispatch/combine kernels on NVLink only (one 8 x H100 node), NVSHMEM, 256 experts top-8, hidden 7168,
# FP8 dispatch, BF16 combine (shared/reference/gpu_collectives_and_kernels.md section 2.1).
PPLX_EP8_H100 = {
    "source": "pplx-kernels README, Benchmark Results, EP8 NVLink on H100 (github.com/ppl-ai/pplx-kernels "
              "@ 7af30594; conditions in its issue #10)",
    "rows": [  # tokens per rank, dispatch_us, combine_us
        (1, 41.6, 41.7),
        (128, 83.6, 102.3),
    ],
}

# NVIDIA Hybrid-EP inside one NVLink domain, kernel-only algorithm bandwidth (GB/s): 4,096 tokens per rank, hidden
# 7168, top-8, FP8 dispatch, BF16 combine (shared/reference/gpu_oplevel.md 4.4).
HYBRID_EP = {
    "source": "NVIDIA Hybrid-EP, DeepEP hybrid-ep branch docs/README_Hybrid-EP.md @ 94a9f8f6 (kernel only)",
    "tokens": 4096,
    "rows": [  # hardware, ranks, dispatch FP8 GB/s, combine GB/s
        ("b200_sxm", 8, 599.27, 673.84),
        ("gb200", 8, 713.98, 737.13),
        ("gb200", 16, 650.48, 666.26),
        ("gb200", 32, 538.86, 605.15),
        ("gb200", 36, 489.27, 596.99),
    ],
}

# DeepGEMM FP8 on H800 SXM5 (github.com/deepseek-ai/DeepGEMM README tables, 2025-02-25 to 2025-04-09).
DEEPGEMM_DENSE = {
    "source": "DeepGEMM README dense FP8 GEMM table, 2025-04-09 (github.com/deepseek-ai/DeepGEMM)",
    "rows": [  # m, n, k, tflops, GB/s
        (64, 2112, 7168, 206, 1688), (64, 24576, 1536, 289, 2455), (64, 32768, 512, 219, 2143),
        (64, 7168, 16384, 336, 2668), (64, 4096, 7168, 287, 2320), (64, 7168, 2048, 295, 2470),
        (128, 2112, 7168, 352, 1509), (128, 24576, 1536, 535, 2448), (128, 32768, 512, 358, 2103),
        (128, 7168, 16384, 645, 2604), (128, 4096, 7168, 533, 2221), (128, 7168, 2048, 510, 2277),
        (4096, 2112, 7168, 1127, 562), (4096, 24576, 1536, 1212, 962), (4096, 32768, 512, 775, 1620),
        (4096, 7168, 16384, 1520, 384), (4096, 4096, 7168, 1410, 541), (4096, 7168, 2048, 1168, 794),
    ],
}
DEEPGEMM_GROUPED = {
    "source": "DeepGEMM README grouped FP8 GEMM tables, contiguous (2025-03-25 onward) and masked (github.com/deepseek-ai/DeepGEMM)",
    "rows": [  # layout, groups, m per group, n, k, tflops, GB/s
        ("contiguous", 4, 8192, 4096, 7168, 1346, 434), ("contiguous", 4, 8192, 7168, 2048, 1214, 752),
        ("contiguous", 8, 4096, 4096, 7168, 1346, 516), ("contiguous", 8, 4096, 7168, 2048, 1214, 826),
        ("masked", 1, 1024, 4096, 7168, 1233, 924), ("masked", 1, 1024, 7168, 2048, 925, 968),
        ("masked", 2, 512, 4096, 7168, 1040, 1288), ("masked", 2, 512, 7168, 2048, 916, 1405),
        ("masked", 4, 256, 4096, 7168, 932, 2064), ("masked", 4, 256, 7168, 2048, 815, 2047),
    ],
}
FLASHMLA_H800 = {
    "source": "FlashMLA README 2025-04-22: 3000 GB/s memory-bound, 660 TFLOPS compute-bound, H800 SXM5 BF16 (github.com/deepseek-ai/FlashMLA)",
    "memory_GB_per_s": 3000.0,
    "compute_tflops": 660.0,
}
H100_CEILINGS = {
    "source": "measured on one H100 80GB HBM3 (PyTorch 2.11, CUDA 13.0): d2d copy 2.98 TB/s (read + write)",
    "copy_GB_per_s": 2980.0,
}
ISCA_LINKS = {
    "source": "DeepSeek ISCA'25 (\"Insights into DeepSeek-V3\", arXiv 2505.09343): NVLink 200 GB/s of which ~160 achievable; IB 50 GB/s per NIC, ~40 effective",
    "nvlink_achievable": 160.0 / 200.0,
    "ib_achievable": 40.0 / 50.0,
}

EXPERT_LOAD_EPLB = {
    "group": "DeepSeek-R1 expert load after offline EPLB (busiest rank / mean)",
    "source": "NVIDIA/TensorRT-LLM blog4_Scaling_Expert_Parallelism_in_TensorRT-LLM.md Table 1 (commit 1d263f15), "
              "decode, machine translation, GB200; max/mean = 1 + imbalance (shared/reference/"
              "expert_load_and_kernels.md section 2)",
    "rows": [  # EP ranks, slots per rank, redundant experts, routed copies per rank per iteration, max/mean
        (32, 9, 32, 1024, 1.109),
        (36, 8, 32, 1024, 1.115),
    ],
}


# ---------------------------------------------------------------------------------------------- HEADLINES
# Whole-deployment results. For `cmtwin validate` only: never read to set a twin constant.
HEADLINES = [
    {"name": "decode tokens/s per NPU", "deployment": "r1_ep320", "overrides": [], "key": "decode.tokens_per_s_per_device",
     "value": 1943.0, "conditions": "batch 96 per NPU, KV 4,096, MTP 1 @ 0.7", "tolerance": 0.05},
    {"name": "decode TPOT ms", "deployment": "r1_ep320", "overrides": [], "key": "decode.tpot_ms",
     "value": 49.4, "conditions": "batch 96 per NPU, KV 4,096, MTP 1 @ 0.7", "tolerance": 0.05},
    {"name": "decode tokens/s per NPU at TPOT <= 15 ms", "deployment": "r1_ep320", "overrides": ["slo.tpot_ms=15"],
     "key": "decode.tokens_per_s_per_device", "value": 538.0, "conditions": "SLO search, 4,096-token prompts",
     "tolerance": 0.10},
    {"name": "prefill tokens/s per NPU (perfect EPLB)", "deployment": "r1_ep320", "overrides": ["placement.balance=perfect"],
     "key": "prefill.tokens_per_s_per_device", "value": 6688.0, "conditions": "4,096-token prompts, 16,384 tokens per NPU",
     "tolerance": 0.05},
    {"name": "prefill tokens/s per NPU (default balance)", "deployment": "r1_ep320", "overrides": [],
     "key": "prefill.tokens_per_s_per_device", "value": 5655.0, "conditions": "4,096-token prompts, 16,384 tokens per NPU",
     "tolerance": 0.10},
]
