"""What the sizing modules share: units, vLLM's default memory share, the one error type."""

from __future__ import annotations

GIB = 2**30
DEFAULT_UTILIZATION = 0.9  # vLLM's default --gpu-memory-utilization
OVERHEAD_GIB = 1.0  # per GPU, outside weights and KV: activations, CUDA graphs, NCCL buffers
TP_SIZES = (1, 2, 4, 8)  # tensor parallel sizes vLLM runs well; a container's GPU count


class SizingError(Exception):
    """A problem with the model's metadata or the request, as one line for the user."""
