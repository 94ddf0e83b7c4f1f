"""A trial runs the settings we export (autotune.run_settings), less what it cannot, and says which.

The DDP overlaps (grad reduce, param all-gather in the forward) run for real on CPU with gloo. GPU FP8
(Transformer Engine, tensorwise recipe, FP8 primary weights) is NOT exercised on CPU: only the configs
it would be built from are checked here, against Megatron Core's own config classes.
"""

from __future__ import annotations

import json

import pytest
import torch

from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.model_catalog import get_model
from autotune.run_settings import run_settings_for
from trial_runner.model_builder import transformer_config
from trial_runner.spec import TrialResult, TrialSpec
from trial_runner.worker import ddp_config_for, trial_run_settings


def _spec(backend="gpu", precision="bf16", num_gpus=4, overlap=True, **knobs) -> TrialSpec:
    job = JobConfig(num_gpus=num_gpus, parallel=ParallelConfig(**knobs),
                    workload=Workload(seq_length=64, global_batch_size=8, precision=precision))
    return TrialSpec(model=get_model("tiny-dense"), job=job, backend=backend, overlap_data_parallel_comm=overlap)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_trial_runs_the_exported_dp_overlaps(backend):
    for dist_opt in (False, True):
        spec = _spec(backend, use_distributed_optimizer=dist_opt)
        exported, ran = run_settings_for(spec.job), trial_run_settings(spec)
        assert (ran.overlap_grad_reduce, ran.overlap_param_gather) == (
            exported.overlap_grad_reduce, exported.overlap_param_gather)
        off = trial_run_settings(_spec(backend, overlap=False, use_distributed_optimizer=dist_opt))
        assert not off.overlap_grad_reduce and not off.overlap_param_gather


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_tp_comm_overlap_is_exported_but_not_run(backend):
    """Userbuffers are not initialised by the runner, so the trial says it ran without them."""
    spec = _spec(backend, tensor_model_parallel_size=2, sequence_parallel=True)
    assert run_settings_for(spec.job).tp_comm_overlap
    assert not trial_run_settings(spec).tp_comm_overlap


def test_fp8_runs_the_exported_recipe_on_gpu_only():
    gpu = _spec("gpu", "fp8", use_distributed_optimizer=True)
    exported, ran = run_settings_for(gpu.job), trial_run_settings(gpu)
    assert (ran.fp8_format, ran.fp8_recipe, ran.fp8_param_gather) == (
        exported.fp8_format, exported.fp8_recipe, exported.fp8_param_gather)
    # CPU trials train in fp32; they must not claim an FP8 run.
    cpu = trial_run_settings(_spec("cpu", "fp8", use_distributed_optimizer=True))
    assert (cpu.fp8_format, cpu.fp8_recipe, cpu.fp8_param_gather) == (None, None, False)


# Megatron Core 0.16.1's own default (cuda_graph_scope="full") warns on every TransformerConfig it builds.
@pytest.mark.filterwarnings("ignore:full scope is deprecated:UserWarning")
@pytest.mark.parametrize("dist_opt", [False, True])
def test_gpu_fp8_transformer_config_carries_the_exported_recipe(dist_opt):
    """NOT a GPU FP8 run: the real Megatron TransformerConfig a GPU FP8 trial would build, on CPU.
    Megatron-LM maps --fp8-format/--fp8-recipe/--fp8-param-gather to fp8/fp8_recipe/fp8_param
    (arguments.py core_transformer_config_from_args)."""
    spec = _spec("gpu", "fp8", use_distributed_optimizer=dist_opt)
    config = transformer_config(spec.model, spec.job.parallel, dtype=torch.bfloat16, use_cpu_initialization=False,
                                run=trial_run_settings(spec))
    assert (config.fp8, config.fp8_recipe, config.fp8_param) == ("hybrid", "tensorwise", dist_opt)
    bf16 = transformer_config(spec.model, spec.job.parallel, dtype=torch.bfloat16, use_cpu_initialization=False,
                              run=trial_run_settings(_spec("gpu", "bf16", use_distributed_optimizer=dist_opt)))
    assert bf16.fp8 is None and not bf16.fp8_param


def test_ddp_config_carries_the_run_settings():
    """Megatron Core's DistributedDataParallelConfig; param all-gathers are aligned across PP stages only
    under the interleaved schedule, as Megatron-LM's validate_args sets it."""
    fp8 = _spec("gpu", "fp8", use_distributed_optimizer=True)
    ddp = ddp_config_for(trial_run_settings(fp8), fp8.job.parallel)
    assert ddp.overlap_grad_reduce and ddp.overlap_param_gather and ddp.fp8_param_gather
    assert ddp.use_distributed_optimizer and not ddp.align_param_gather
    vpp = _spec("cpu", pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2)
    assert ddp_config_for(trial_run_settings(vpp), vpp.job.parallel).align_param_gather
    plain = _spec("cpu", use_distributed_optimizer=False)
    ddp = ddp_config_for(trial_run_settings(plain), plain.job.parallel)
    assert ddp.overlap_grad_reduce and not ddp.overlap_param_gather and not ddp.fp8_param_gather


def test_results_written_before_run_settings_still_load(make_spec):
    """result.json files from before run_settings was recorded (and specs before the overlap switch)."""
    old = TrialResult(status="completed", config_key="k", num_ranks=1, backend="cpu").model_dump(mode="json")
    del old["run_settings"]
    assert TrialResult.model_validate_json(json.dumps(old)).run_settings is None
    spec = make_spec().model_dump(mode="json")
    del spec["overlap_data_parallel_comm"]
    assert TrialSpec.model_validate_json(json.dumps(spec)).overlap_data_parallel_comm


@pytest.mark.timeout(300)
def test_dp_overlap_trains_like_no_overlap_and_is_recorded(trials, make_spec, assert_trained):
    """DP2 with the distributed optimizer: the grad reduce overlapped with the backward and the param
    all-gather in the next forward (Megatron-LM's train() hooks) give the losses of the same run with
    both done after the backward / optimizer step, and result.json says which ran."""
    on_spec = make_spec("tiny-dense", 2, use_distributed_optimizer=True)  # the matrix's dp2_distopt
    on = trials.get("dp2_distopt", on_spec)
    off = trials.get("dp2_distopt_no_overlap",
                     make_spec("tiny-dense", 2, use_distributed_optimizer=True, overlap_data_parallel_comm=False))
    assert_trained(on)
    assert_trained(off)
    # Same buckets, same reduction order: fp32 on CPU leaves only summation-order noise.
    assert on.losses == pytest.approx(off.losses, abs=1e-5)
    # On CPU the trial runs the exported settings in full for this config (no TP, no FP8).
    assert on.run_settings == run_settings_for(on_spec.job)
    written = json.loads((trials.tmp_dir / "dp2_distopt.json").read_text())["run_settings"]
    assert written["overlap_grad_reduce"] and written["overlap_param_gather"]
    assert not written["tp_comm_overlap"] and written["fp8_recipe"] is None
    assert not off.run_settings.overlap_grad_reduce and not off.run_settings.overlap_param_gather
