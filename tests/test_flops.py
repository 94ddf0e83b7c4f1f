"""Known-answer tests for model FLOPs (autotune/flops.py) against the formulas in shared/refdata/FORMULAS.md."""

from __future__ import annotations

import pytest

from autotune.flops import model_flops_per_iteration, model_flops_per_token
from autotune.model_catalog import get_model


def test_gpt3_175b_equals_korthikanti_eq7():
    # FORMULAS.md §1 (Korthikanti et al. 2022, arXiv 2205.05198, Appendix A Eq. 7), full s^2 (non-causal):
    # model FLOPs / iteration = 72 B L s h^2 (1 + s/(6h) + v/(12hL)).
    m = get_model("gpt3-175b")
    B, s, L, h, v = 1536, 2048, 96, 12288, 51200
    expected = 72 * B * L * s * h**2 * (1 + s / (6 * h) + v / (12 * h * L))
    got = model_flops_per_iteration(m, s, B, causal=False)
    assert got == pytest.approx(expected, rel=1e-12)


def test_llama3_70b_equals_megatron_formula():
    # FORMULAS.md §3 (Megatron-LM training.py::num_floating_point_operations, causal ½ on the s^2 term):
    # 3 x 2 x { T.h.ffn.f.L + T.L.[h(q+k+v) + q.h] + B.s^2.L.q + T.h.V },  f = 3 (SwiGLU).
    m = get_model("llama3-70b")
    B, s = 128, 8192
    T, h, L, ffn, V = B * s, 8192, 80, 28672, 128256
    q, kv = 64 * 128, 8 * 128
    expected = 3 * 2 * (T * h * ffn * 3 * L + T * L * (h * (q + 2 * kv) + q * h) + B * s**2 * L * q + T * h * V)
    assert model_flops_per_iteration(m, s, B) == pytest.approx(expected, rel=1e-12)


def test_llama3_70b_noncausal_matches_nemo_2407_tflops():
    # FORMULAS.md §3: NeMo 24.07 LLAMA3-70B H100 = 1524 tok/s/GPU and 734 TFLOP/s/GPU, which matches the
    # non-causal formula (4.81e11 FLOP/token). 734e12/1524 = 4.816e11; the table rounds, so allow 0.5%.
    per_token = model_flops_per_token(get_model("llama3-70b"), 8192, causal=False).total
    assert per_token == pytest.approx(734e12 / 1524, rel=5e-3)
    causal = model_flops_per_token(get_model("llama3-70b"), 8192, causal=True).total
    assert causal / per_token == pytest.approx(684 / 734, rel=5e-3)  # FORMULAS.md: "would be ≈ 684"


def test_mixtral_8x7b_active_flops_hand_derived():
    # Mixtral 8x7B: 32 layers, h=4096, 32 heads, 8 KV groups of 128, SwiGLU experts of 14336, top-2, V=32000.
    s = 4096
    attention = 2 * (4096 * (4096 + 2 * 1024) + 4096 * 4096)  # QKV + output projection, per token
    core = 2 * s * (2 * 4096) // 2  # QK^T and AV over s keys, causal half
    experts = 2 * 4096 * 14336 * 3 * 2  # gate, up, down of 2 routed experts
    logits = 2 * 4096 * 32000
    expected = 3 * (32 * (attention + core + experts) + logits)
    got = model_flops_per_token(get_model("mixtral-8x7b"), s)
    assert got.total == pytest.approx(expected, rel=1e-12)
    # Sanity: ~6 x 12.9B active params plus attention.
    assert 6 * 12.9e9 < got.total < 6 * 12.9e9 * 1.1


def test_qwen3_30b_a3b_active_flops_hand_derived():
    # Qwen3-30B-A3B: 48 layers, h=2048, 32 heads x 128 (q=4096 != h), 4 KV groups, 128 experts of 768, top-8.
    s = 4096
    attention = 2 * (2048 * (4096 + 2 * 512) + 4096 * 2048)
    core = 2 * s * (2 * 4096) // 2
    experts = 2 * 2048 * 768 * 3 * 8
    logits = 2 * 2048 * 151936
    expected = 3 * (48 * (attention + core + experts) + logits)
    got = model_flops_per_token(get_model("qwen3-30b-a3b"), s)
    assert got.total == pytest.approx(expected, rel=1e-12)
    assert got.mlp == pytest.approx(3 * 48 * experts, rel=1e-12)


def test_mla_attention_uses_lora_shapes():
    # DeepSeek-V3 MLA (FORMULAS.md §3 "MLA replaces the attention terms with the LoRA projection shapes"):
    # q: 1536*(7168 + 128*192), kv: 512*(7168 + 128*(128+128)) + 7168*64, out: 128*128*7168.
    # Its 61 decoder layers plus the one MTP layer, which Megatron's formula counts as one more layer
    # (training.py::num_floating_point_operations: num_layers = args.num_layers + mtp_num_layers).
    m = get_model("deepseek-v3")
    per_layer = 2 * (1536 * (7168 + 128 * 192) + 512 * (7168 + 128 * 256) + 7168 * 64 + 128 * 128 * 7168)
    got = model_flops_per_token(m, 4096)
    assert got.attention_linear == pytest.approx(3 * 62 * per_layer, rel=1e-12)
    assert got.core_attention == pytest.approx(3 * 62 * 2 * 4096 * 128 * (192 + 128) * 0.5, rel=1e-12)


def test_mtp_layer_counts_as_one_more_moe_layer():
    # Megatron's num_floating_point_operations (training.py @ d98e8a64): with --mtp-num-layers 1 and a MoE
    # last layer, num_moe_layers += 1, and the MTP norms / eh_proj term 3h + 2h^2 and a second logits GEMM
    # are added. DeepSeek-V3 per token, by hand: 58 MoE layers + 1 MTP = 59 MoE MLPs of 8 routed experts
    # of width 2048 and one shared expert of 2048 (SwiGLU: 3 GEMMs), 3 dense MLPs of width 18432.
    m = get_model("deepseek-v3")
    h, v = 7168, 129280
    moe_mlp = 2 * h * (2048 * 8 + 2048) * 3
    dense_mlp = 2 * h * 18432 * 3
    got = model_flops_per_token(m, 4096)
    assert got.mlp == pytest.approx(3 * (59 * moe_mlp + 3 * dense_mlp), rel=1e-12)
    assert got.logits == pytest.approx(3 * (2 * h * v * 2 + 2 * (3 * h + 2 * h * h)), rel=1e-12)
