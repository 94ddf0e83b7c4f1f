"""GPU catalog and cluster shapes."""

from __future__ import annotations

import pytest

from autotune.cluster import GPU_TYPES, ClusterSpec, get_gpu
from autotune.errors import ConfigError, UnknownNameError


def test_required_gpu_types_present():
    assert {"a100-40gb", "a100-80gb", "h100-80gb", "h200-141gb", "b200", "gb200"} <= set(GPU_TYPES)


def test_datasheet_figures():
    # NVIDIA H100 SXM5 datasheet: 989 TFLOP/s BF16 dense, 1,979 FP8 dense, 3.35 TB/s, NVLink 900 GB/s total.
    h100 = get_gpu("h100-80gb")
    assert (h100.bf16_tflops, h100.fp8_tflops, h100.hbm_bandwidth_gbps, h100.nvlink_bandwidth_gbps * 2) == \
        (989, 1979, 3350, 900)
    assert get_gpu("a100-80gb").fp8_tflops is None  # Ampere has no FP8 tensor cores
    assert get_gpu("gb200").nvlink_domain_size == 72


def test_gpus_per_node_default_and_override():
    assert ClusterSpec.build(64, "h100-80gb").gpus_per_node == 8
    c = ClusterSpec.build(64, "h100-80gb", gpus_per_node=4)
    assert (c.gpus_per_node, c.num_nodes, c.nvlink_domain_size) == (4, 16, 4)


def test_nvl72_domain_spans_nodes():
    c = ClusterSpec.build(144, "gb200")
    assert (c.gpus_per_node, c.nvlink_domain_size) == (4, 72)


def test_partial_node_is_fine_for_one_node():
    assert ClusterSpec.build(4, "h100-80gb").num_nodes == 1


def test_partial_nodes_are_rejected():
    with pytest.raises(ConfigError, match=r"--gpus 12 does not fill whole nodes of 8 GPUs.*16"):
        ClusterSpec.build(12, "h100-80gb")


def test_unknown_gpu_type():
    with pytest.raises(UnknownNameError, match=r"unknown GPU type 'h1000'.*h100-80gb"):
        get_gpu("h1000")


def test_zero_gpus():
    with pytest.raises(ConfigError, match="positive integer"):
        ClusterSpec.build(0)
