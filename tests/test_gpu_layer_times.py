"""The per-layer GPU benchmark's harness (benchmarks/gpu_layer_times.py) and the compute term it checks.

The benchmark's figures need a GPU; here it runs its CPU smoke mode, which builds the same real Megatron Core
layers at tiny shapes, to check that each measured layer really is one TP (= ETP) shard of the model.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from autotune import constraints as C
from autotune.cluster import ClusterSpec
from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.cost import RunOptions, combine, layer_compute_s, output_layer_s, predict
from autotune.cost_constants import load_cost_constants
from autotune.cost_terms import step_work
from autotune.model_catalog import get_model
from autotune.params import layer_params
from benchmarks.gpu_layer_times import MEASURE_VOCAB, SMOKE_CASES, SMOKE_OUTPUT_CASES

ROOT = Path(__file__).resolve().parent.parent


def test_layer_compute_is_the_per_layer_compute_of_combine():
    """combine() adds one layer's layer_compute_s forward + backward per decoder layer: a 2-layer model's compute
    minus a 1-layer model's is exactly that (the output layer, the loss and the optimizer cancel)."""
    base = get_model("llama3-8b")
    cluster = ClusterSpec.build(8, "h100-80gb")
    workload = Workload(seq_length=4096, global_batch_size=16)
    knobs = C.Knobs.batch_of(ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True, micro_batch_size=2))
    c, run = load_cost_constants(), RunOptions()
    compute = []
    for layers in (2, 1):
        model = base.model_copy(update={"num_layers": layers})
        work = step_work(model, cluster, workload, knobs)
        compute.append(float(combine(work, model, cluster, workload, c, run)["compute"][0]))
        if layers == 1:
            parts = layer_compute_s(work.dense, cluster.gpu, workload.precision, c, run)
    micro_batches = workload.global_batch_size // (2 * 4)  # GBS / (MBS x DP), DP = 8 / TP
    per_layer = (float(parts["forward"][0]) + float(parts["backward"][0])) * micro_batches
    assert math.isclose(compute[0] - compute[1], per_layer, rel_tol=1e-9)
    assert float(parts["gemm"][0]) > 0 and float(parts["fixed"][0]) == c.layer_overhead_s


def test_smoke_run_builds_one_tp_shard_per_layer(tmp_path):
    """The CPU smoke run of the benchmark (real Megatron Core layers) reports, per case, the parameters of one
    built layer; they must equal one GPU's share of the full model's layer at TP = ETP = shard, counted by
    autotune.params: attention and dense MLP split over TP, routed experts over ETP, norms and router whole."""
    out, js = tmp_path / "layers.md", tmp_path / "layers.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_layer_times.py"), "--smoke", "--warmup",
                           "1", "--iters", "2", "--out", str(out), "--json", str(js)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(js.read_text())["rows"]
    expected_cases = [(m, t, b) for m, shards, mbss in SMOKE_CASES for t in shards for b in mbss]
    assert [(r["model"], r["shard"], r["micro_batch_size"]) for r in rows] == expected_cases
    for r in rows:
        full = get_model(r["model"])
        lp = layer_params(full, full.is_moe)
        t = r["shard"]
        share = (lp.attention + lp.mlp + lp.routed_experts) // t + lp.attention_replicated + lp.router + lp.norms
        assert r["layer_params"] == share, r
        assert all(np.isfinite([r["measured_fwd_ms"], r["measured_bwd_ms"]]))
        assert r["predicted_fwd_ms"] > 0 and r["predicted_bwd_ms"] > r["predicted_fwd_ms"]
    layers_and_fixed, output_section = out.read_text().split("Output layer and loss per micro-batch")
    per_case, fixed_time = layers_and_fixed.split("Fixed time per layer")
    assert per_case.count("\n| tiny-") == len(expected_cases)
    # One intercept line per (model, shard) measured at two or more micro-batch sizes.
    assert fixed_time.count("\n| tiny-") == sum(len(shards) for _, shards, mbss in SMOKE_CASES if len(mbss) > 1)
    # The output-layer cases: the vocabulary each shard holds, and the cost model's figure for the difference.
    outputs = json.loads(js.read_text())["output_rows"]
    expected_outputs = [(m, v, t, b) for m, v, shards, mbss in SMOKE_OUTPUT_CASES for t in shards for b in mbss]
    assert [(o["model"], o["vocab_per_gpu"] * o["shard"], o["shard"], o["micro_batch_size"]) for o in outputs] == \
        expected_outputs
    for o in outputs:
        assert o["vocab_per_gpu"] > MEASURE_VOCAB and all(np.isfinite([o["measured_fwd_ms"], o["measured_bwd_ms"]]))
        assert o["predicted_gemm_ms"] > 0 and o["predicted_loss_ms"] > 0
    assert output_section.count("\n| tiny-") == len(expected_outputs)


def test_output_layer_is_what_the_last_stage_adds():
    """With an even split, the last stage runs the same decoder layers as the first plus the output layer and
    the loss, once per micro-batch: the stage times differ by exactly cost.output_layer_s, the term the
    benchmark's output-layer cases measure (the embedding lookup is not modelled)."""
    model, cluster = get_model("llama3-8b"), ClusterSpec.build(8, "h100-80gb")
    workload = Workload(seq_length=4096, global_batch_size=32, precision="fp8")
    parallel = ParallelConfig(pipeline_model_parallel_size=2, micro_batch_size=2)
    est = predict(model, cluster, JobConfig(num_gpus=8, parallel=parallel, workload=workload))
    assert est.stage_layers == {"0": 16, "1": 16}
    work = step_work(model, cluster, workload, C.Knobs.batch_of(parallel))
    gemms, loss = output_layer_s(work, cluster.gpu, load_cost_constants())
    extra = est.stage_microbatch_s["1"] - est.stage_microbatch_s["0"]
    assert math.isclose(extra, float(gemms[0] + loss[0]), rel_tol=1e-9)
    # The output GEMMs: 2 x tokens x hidden x vocabulary per pass, three passes, bf16; at least their math time.
    flops = 3 * 2 * 2 * 4096 * model.hidden_size * model.vocab_size
    assert float(gemms[0]) >= flops / (cluster.gpu.bf16_tflops * 1e12)


def test_unknown_case_model_is_a_one_line_error(capsys):
    from benchmarks.gpu_layer_times import main

    assert main(["--smoke", "--models", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-model" in err[0] and "tiny-dense" in err[0]
