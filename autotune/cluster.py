"""GPU types and the cluster a search runs on.

Figures are the vendors' datasheet values (dense, i.e. without 2:4 sparsity):
- A100: NVIDIA A100 Tensor Core GPU datasheet (SXM4): 312 TFLOP/s BF16, 1,555 GB/s (40GB) and
  2,039 GB/s (80GB) HBM, NVLink 600 GB/s; DGX A100 has 8x 200 Gb/s HDR InfiniBand (25 GB/s per GPU).
- H100: NVIDIA H100 Tensor Core GPU datasheet (SXM5): 989 TFLOP/s BF16, 1,979 FP8, 3.35 TB/s HBM3,
  NVLink 900 GB/s; DGX H100 has 8x 400 Gb/s NDR ConnectX-7 (50 GB/s per GPU).
- H200: NVIDIA H200 Tensor Core GPU datasheet (SXM): 141 GB HBM3e at 4.8 TB/s, same compute and
  NVLink as H100; HGX H200 pairs each GPU with a 400 Gb/s NIC.
- B200: NVIDIA HGX B200 datasheet: 8 GPUs with 1.44 TB HBM3e (180 GB each), 64 TB/s (8 TB/s each),
  72 PFLOP/s FP8 and 36 PFLOP/s BF16 sparse for 8 GPUs (2.25 PF BF16 / 4.5 PF FP8 dense each),
  NVLink 5 at 1.8 TB/s per GPU, 400 Gb/s ConnectX-7 per GPU.
- GB200: NVIDIA GB200 NVL72 datasheet: 72 GPUs with 13.4 TB HBM3e (186 GB each) at 8 TB/s each,
  2.5 PF BF16 / 5 PF FP8 dense per GPU, 1.8 TB/s NVLink per GPU in one 72-GPU NVLink domain;
  4 GPUs per compute tray; 400 Gb/s ConnectX-7 per GPU for scale-out.

Memory is the datasheet capacity taken as GiB; the CUDA context and allocator margins are charged
by the memory model as named overhead terms, not hidden here. Bandwidths are per direction
(NVLink's datasheet figure is the bidirectional total, so it is halved).
"""

from __future__ import annotations

import difflib

from pydantic import BaseModel, ConfigDict, Field

from autotune.errors import ConfigError, UnknownNameError


class GPUSpec(BaseModel):
    """One GPU type, from its vendor datasheet."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    usable_memory_gib: float = Field(gt=0, description="HBM capacity")
    bf16_tflops: float = Field(gt=0, description="dense BF16 peak")
    fp8_tflops: float | None = Field(description="dense FP8 peak; None where the GPU has no FP8 tensor cores")
    hbm_bandwidth_gbps: float = Field(gt=0, description="HBM bandwidth, GB/s")
    nvlink_bandwidth_gbps: float = Field(gt=0, description="NVLink bandwidth per GPU per direction, GB/s")
    default_gpus_per_node: int = Field(gt=0)
    nvlink_domain_size: int = Field(gt=0, description="GPUs that share one NVLink fabric (8 HGX, 72 NVL72)")
    internode_bandwidth_gbps: float = Field(gt=0, description="scale-out NIC bandwidth per GPU per direction, GB/s")
    source: str


GPU_TYPES: dict[str, GPUSpec] = {
    g.name: g
    for g in (
        GPUSpec(name="a100-40gb", usable_memory_gib=40, bf16_tflops=312, fp8_tflops=None, hbm_bandwidth_gbps=1555,
                nvlink_bandwidth_gbps=300, default_gpus_per_node=8, nvlink_domain_size=8,
                internode_bandwidth_gbps=25, source="NVIDIA A100 datasheet (SXM4 40GB); DGX A100 HDR 200Gb/s"),
        GPUSpec(name="a100-80gb", usable_memory_gib=80, bf16_tflops=312, fp8_tflops=None, hbm_bandwidth_gbps=2039,
                nvlink_bandwidth_gbps=300, default_gpus_per_node=8, nvlink_domain_size=8,
                internode_bandwidth_gbps=25, source="NVIDIA A100 datasheet (SXM4 80GB); DGX A100 HDR 200Gb/s"),
        GPUSpec(name="h100-80gb", usable_memory_gib=80, bf16_tflops=989, fp8_tflops=1979, hbm_bandwidth_gbps=3350,
                nvlink_bandwidth_gbps=450, default_gpus_per_node=8, nvlink_domain_size=8,
                internode_bandwidth_gbps=50, source="NVIDIA H100 datasheet (SXM5); DGX H100 NDR 400Gb/s"),
        GPUSpec(name="h200-141gb", usable_memory_gib=141, bf16_tflops=989, fp8_tflops=1979, hbm_bandwidth_gbps=4800,
                nvlink_bandwidth_gbps=450, default_gpus_per_node=8, nvlink_domain_size=8,
                internode_bandwidth_gbps=50, source="NVIDIA H200 datasheet (SXM); HGX H200 400Gb/s NICs"),
        GPUSpec(name="b200", usable_memory_gib=180, bf16_tflops=2250, fp8_tflops=4500, hbm_bandwidth_gbps=8000,
                nvlink_bandwidth_gbps=900, default_gpus_per_node=8, nvlink_domain_size=8,
                internode_bandwidth_gbps=50, source="NVIDIA HGX B200 datasheet; ConnectX-7 400Gb/s"),
        GPUSpec(name="gb200", usable_memory_gib=186, bf16_tflops=2500, fp8_tflops=5000, hbm_bandwidth_gbps=8000,
                nvlink_bandwidth_gbps=900, default_gpus_per_node=4, nvlink_domain_size=72,
                internode_bandwidth_gbps=50, source="NVIDIA GB200 NVL72 datasheet; ConnectX-7 400Gb/s"),
    )
}

GPU_ALIASES = {"a100": "a100-80gb", "h100": "h100-80gb", "h200": "h200-141gb", "h100-sxm": "h100-80gb"}
DEFAULT_GPU_TYPE = "h100-80gb"


def get_gpu(name: str) -> GPUSpec:
    key = GPU_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key in GPU_TYPES:
        return GPU_TYPES[key]
    close = difflib.get_close_matches(key, list(GPU_TYPES), n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UnknownNameError(f"unknown GPU type '{name}': {hint}known types: {', '.join(GPU_TYPES)}")


class ClusterSpec(BaseModel):
    """The GPUs a job runs on: how many, which type, how they are grouped into nodes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_gpus: int = Field(description="GPUs of the training job (the world size)")
    gpu: GPUSpec
    gpus_per_node: int = Field(description="GPUs per node (defaults to the GPU type's)")

    @classmethod
    def build(cls, num_gpus: int, gpu_type: str = DEFAULT_GPU_TYPE, gpus_per_node: int | None = None) -> "ClusterSpec":
        gpu = get_gpu(gpu_type)
        per_node = gpu.default_gpus_per_node if gpus_per_node is None else gpus_per_node
        if num_gpus <= 0:
            raise ConfigError(f"--gpus must be a positive integer, got {num_gpus}")
        if per_node <= 0:
            raise ConfigError(f"--gpus-per-node must be a positive integer, got {per_node}")
        if num_gpus > per_node and num_gpus % per_node != 0:
            raise ConfigError(
                f"--gpus {num_gpus} does not fill whole nodes of {per_node} GPUs; "
                f"use a multiple of {per_node} (e.g. {num_gpus // per_node * per_node or per_node} "
                f"or {(num_gpus // per_node + 1) * per_node}) or set --gpus-per-node"
            )
        return cls(num_gpus=num_gpus, gpu=gpu, gpus_per_node=per_node)

    @property
    def num_nodes(self) -> int:
        return max(1, self.num_gpus // self.gpus_per_node)

    @property
    def nvlink_domain_size(self) -> int:
        """GPUs reachable over NVLink: the node on HGX systems, the whole rack on NVL72."""
        if self.gpu.nvlink_domain_size > self.gpu.default_gpus_per_node:
            return self.gpu.nvlink_domain_size  # NVLink switch trays span several nodes
        return self.gpus_per_node
