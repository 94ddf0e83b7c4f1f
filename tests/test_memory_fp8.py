"""FP8 memory terms: Transformer Engine's FP8 weight copies and 1-byte saved GEMM inputs.

Known answers are derived by hand below from the sources the model cites: TransformerEngine @ d0067d0d
(transformer_engine/pytorch/module/linear.py, tensor/utils.py, tensor/storage/float8_tensor_storage.py,
utils.py), Megatron-LM @ d98e8a64 and Megatron-Bridge @ 067f987 (training/mixed_precision.py).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from autotune.cluster import ClusterSpec
from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.memory import GIB, MemoryOptions, estimate_memory, peak_memory_gib_batch
from autotune.memory_activations import RECOMPUTE_MODULES, Shard, dense_layer_bytes, moe_layer_bytes
from autotune.memory_fp8 import gemm_weight_bytes_per_element, gemm_weight_elements, needs_fp8_transpose
from autotune.model_catalog import get_model
from autotune.space import enumerate_space
from autotune.space_files import default_space

# Llama 3 70B: hidden 8192, ffn 28672 (SwiGLU), 64 heads of 128, 8 KV groups, no linear biases.
H, FFN, Q, KV = 8192, 28672, 64 * 128, 8 * 128


def test_llama3_70b_layer_gemm_weight_bytes_at_tp4():
    # GEMM weights of one layer: linear_qkv, linear_proj, linear_fc1 (gate+up), linear_fc2; TP shards them all.
    elements = (H * (Q + 2 * KV) + Q * H + H * 2 * FFN + FFN * H) // 4
    assert elements == 213_909_504
    assert gemm_weight_elements(get_model("llama3-70b"), 1, 0, 4, 1) == elements
    # FP8 primary weights (Bridge fp8_param_gather=True): 1-byte data in the uint8 param buffer
    # (Megatron param_and_grad_buffer.py:923) plus, on Hopper, the transpose TE pre-creates after each
    # all-gather (tensor/utils.py:1423-1427) and keeps for dgrad (linear.py:1051): 2 bytes per element.
    assert gemm_weight_bytes_per_element(True, True, transpose=True) * elements == 427_819_008
    # Blackwell runs non-TN FP8 GEMMs (utils.py:658-663): no transpose, 1 byte.
    assert gemm_weight_bytes_per_element(True, True, transpose=False) * elements == 213_909_504
    # bf16 weights: 2 bytes plus TE's cached FP8 workspace, rowwise + columnwise (linear.py:475-490, :1958).
    assert gemm_weight_bytes_per_element(True, False, transpose=True) * elements == 855_638_016
    assert gemm_weight_bytes_per_element(False, True, transpose=True) == 2  # bf16 runs: unchanged


def test_llama3_70b_layer_saved_activations_in_fp8_at_tp4_sp():
    """One micro-batch of 4096 tokens, TP 4 with SP, core_attn recomputed (Bridge's baseline)."""
    t, tp = 4096, 4
    q_local, kv_local = Q // tp, 2 * KV // tp  # 8 groups over 4 ranks: 2 groups of K and V each
    expected = {
        "input_layernorm input (bf16, saved by LayerNormLinear)": 2 * t * H // tp,
        "qkv input = norm output, FP8 local shard (linear.py:421-436, :600-621)": 1 * t * H // tp,
        "q, k, v (bf16, the core_attn checkpoint inputs)": 2 * t * (q_local + kv_local),
        "linear_proj input, FP8 copy only (the checkpoint keeps no bf16 output)": 1 * t * q_local,
        "pre_mlp_layernorm input (bf16)": 2 * t * H // tp,
        "fc1 input = norm output, FP8": 1 * t * H // tp,
        "fc1 output (bf16, saved by Megatron's swiglu, fused_bias_swiglu.py:180-184)": 2 * t * 2 * FFN // tp,
        "fc2 input = swiglu output, FP8": 1 * t * FFN // tp,
    }
    assert sum(expected.values()) == 226_492_416
    fp8 = Shard(tokens=t, tp=tp, sp=1, etp=1, fp8=True)
    assert dense_layer_bytes(get_model("llama3-70b"), fp8, frozenset({"core_attn"})) == pytest.approx(226_492_416)
    # bf16 keeps 2 bytes for the four linear inputs instead (attention output: one shared tensor).
    bf16 = Shard(tokens=t, tp=tp, sp=1, etp=1, fp8=False)
    more = 1 * t * H // tp + 1 * t * q_local + 1 * t * H // tp + 1 * t * FFN // tp
    assert dense_layer_bytes(get_model("llama3-70b"), bf16, frozenset({"core_attn"})) == \
        pytest.approx(226_492_416 + more)


MODULE_SETS = [frozenset(c) for r in range(4) for c in itertools.combinations(RECOMPUTE_MODULES, r)]


@pytest.mark.parametrize("model_name", ["llama3-70b", "qwen3-30b-a3b", "deepseek-v2-lite"])
@pytest.mark.parametrize("tp,sp", [(1, 0), (2, 0), (4, 1), (8, 1)])
def test_fp8_never_saves_more_than_bf16_beyond_the_projection_copy(model_name, tp, sp):
    """Property: FP8 shrinks or keeps every saved GEMM input. The only tensor it adds is linear_proj's
    1-byte copy of the attention output while fused attention keeps the bf16 original."""
    m = get_model(model_name)
    t = 4096
    kw = dict(tokens=t, tp=tp, sp=sp, etp=1)
    fp8, bf16 = Shard(**kw, fp8=True), Shard(**kw, fp8=False)
    heads_width = m.num_attention_heads * (m.mla.v_head_dim if m.mla else m.kv_channels) / tp
    layers = [dense_layer_bytes] + ([moe_layer_bytes] if m.is_moe else [])
    for layer, modules in itertools.product(layers, MODULE_SETS):
        extra = 0 if "core_attn" in modules else 1 * t * heads_width
        assert layer(m, fp8, modules) <= layer(m, bf16, modules) + extra, (layer.__name__, sorted(modules))
        if "core_attn" in modules:
            assert layer(m, fp8, modules) < layer(m, bf16, modules), (layer.__name__, sorted(modules))


def test_fp8_transpose_follows_te_gemm_layout_support():
    assert needs_fp8_transpose("h100-80gb") and needs_fp8_transpose("h200-141gb")
    assert not needs_fp8_transpose("b200") and not needs_fp8_transpose("gb200")
    assert needs_fp8_transpose("some-future-gpu")  # unknown: assume the larger footprint


def _job(precision: str, gpus: int = 32, **kw) -> JobConfig:
    kw = {"use_distributed_optimizer": True, **kw}
    parallel = ParallelConfig(tensor_model_parallel_size=4, pipeline_model_parallel_size=4,
                              virtual_pipeline_model_parallel_size=5, sequence_parallel=True,
                              recompute_granularity="selective", **kw)
    return JobConfig(num_gpus=gpus, parallel=parallel,
                     workload=Workload(seq_length=4096, global_batch_size=32, precision=precision))


@pytest.mark.parametrize("gpu,fp8_param,extra_bytes", [("h100-80gb", True, 0), ("b200", True, -1),
                                                       ("h100-80gb", False, 2), ("b200", False, 1)])
def test_fp8_weights_differ_from_bf16_by_the_te_bytes_of_the_gemm_weights(gpu, fp8_param, extra_bytes):
    model = get_model("llama3-70b")
    cluster = ClusterSpec.build(32, gpu)
    opts = MemoryOptions(fp8_param=fp8_param)
    fp8 = estimate_memory(model, cluster, _job("fp8"), options=opts)
    bf16 = estimate_memory(model, cluster, _job("bf16"), options=opts)
    for a, b in zip(fp8.stages, bf16.stages):
        layers = 80 // 4  # 20 layers per stage, all dense
        expected = extra_bytes * gemm_weight_elements(model, layers, 0, 4, 1) / GIB
        assert a.weights_gib - b.weights_gib == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert a.num_parameters == b.num_parameters


def test_fp8_primary_weights_only_with_the_distributed_optimizer():
    """Megatron-LM refuses --fp8-param-gather without the distributed optimizer (arguments.py
    validate_args), so such a run keeps bf16 weights plus TE's cached FP8 copy (+2 bytes per GEMM weight
    on Hopper: 1 byte + 1 byte transpose, memory_fp8.py)."""
    model = get_model("llama3-70b")
    cluster = ClusterSpec.build(32, "h100-80gb")
    fp8 = estimate_memory(model, cluster, _job("fp8", use_distributed_optimizer=False))
    bf16 = estimate_memory(model, cluster, _job("bf16", use_distributed_optimizer=False))
    for a, b in zip(fp8.stages, bf16.stages):
        assert a.weights_gib - b.weights_gib == pytest.approx(2 * gemm_weight_elements(model, 20, 0, 4, 1) / GIB,
                                                              rel=1e-9)


@pytest.mark.parametrize("model_name,gpus,gpu", [("llama3-70b", 64, "h100-80gb"), ("tiny-moe", 8, "h100-80gb"),
                                                 ("deepseek-v2-lite", 32, "b200")])
@pytest.mark.parametrize("fp8_param", [True, False])
def test_batch_agrees_with_scalar_in_fp8(model_name, gpus, gpu, fp8_param):
    """Same contract as test_memory.py: the batch path only bounds the optimizer's bucket padding (< 0.1%),
    far below the FP8 weight terms (GiBs), so a missing FP8 term on either path fails here."""
    model = get_model(model_name)
    cluster = ClusterSpec.build(gpus, gpu)
    workload = Workload(seq_length=4096 if "tiny" not in model_name else 256, global_batch_size=128,
                        precision="fp8")
    opts = MemoryOptions(fp8_param=fp8_param)
    space = enumerate_space(default_space(model), model, cluster, workload, memory_options=opts)
    assert space.num_feasible > 0
    batch = peak_memory_gib_batch(model, cluster, workload, space.knobs, options=opts)
    idx = np.random.default_rng(1).choice(space.num_feasible, min(space.num_feasible, 150), replace=False)
    for i in idx:
        est = estimate_memory(model, cluster, space.job(int(i)), options=opts)
        key = space.job(int(i)).parallel.canonical_key()
        assert est.peak_memory_gib * (1 - 1e-12) <= batch[i] <= est.peak_memory_gib * (1 + 1e-3), key
