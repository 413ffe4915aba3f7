"""cmtwin: plan, predict and check deployments of giant MoE models on AI supernodes."""

__version__ = "0.1.0"
