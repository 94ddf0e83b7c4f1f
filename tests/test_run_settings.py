"""The run settings (overlaps, FP8 recipe) one config is launched with, and the export derived from them."""

from __future__ import annotations

import itertools

import pytest

from autotune import export
from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.run_settings import RunSettings, run_settings_for


def _job(precision="bf16", **knobs) -> JobConfig:
    return JobConfig(num_gpus=16, parallel=ParallelConfig(**knobs),
                     workload=Workload(seq_length=4096, global_batch_size=64, precision=precision))


def _jobs():
    """Every combination of the knobs the settings depend on."""
    for tp, sp, dist_opt, precision in itertools.product([1, 2], [False, True], [False, True], ["bf16", "fp8"]):
        if sp and tp == 1:
            continue
        yield _job(precision, tensor_model_parallel_size=tp, sequence_parallel=sp, use_distributed_optimizer=dist_opt)


def test_settings_follow_megatron_lm_rules():
    """arguments.py validate_args (core_v0.16.1): --overlap-param-gather needs the distributed optimizer,
    --tp-comm-overlap needs --sequence-parallel, --fp8-param-gather needs the distributed optimizer."""
    for job in _jobs():
        p, s = job.parallel, run_settings_for(job)
        assert s.overlap_grad_reduce
        assert s.overlap_param_gather == p.use_distributed_optimizer
        assert s.tp_comm_overlap == (p.tp > 1 and p.sequence_parallel)
        fp8 = job.workload.precision == "fp8"
        assert (s.fp8_format, s.fp8_recipe) == (("hybrid", "tensorwise") if fp8 else (None, None))
        assert s.fp8_param_gather == (fp8 and p.use_distributed_optimizer)


def test_megatron_args_are_derived_from_the_settings():
    for job in _jobs():
        s, args = run_settings_for(job), export.megatron_args(job)
        for flag, on in [("--overlap-grad-reduce", s.overlap_grad_reduce),
                         ("--overlap-param-gather", s.overlap_param_gather),
                         ("--tp-comm-overlap", s.tp_comm_overlap), ("--fp8-param-gather", s.fp8_param_gather)]:
            assert (flag in args) == on, (flag, job.parallel.canonical_key(), job.workload.precision)
        if s.fp8_format:
            assert args[args.index("--fp8-format") + 1] == s.fp8_format
            assert args[args.index("--fp8-recipe") + 1] == s.fp8_recipe
        else:
            assert "--fp8-format" not in args and "--fp8-recipe" not in args


def test_bridge_overrides_are_derived_from_the_settings():
    for job in _jobs():
        s = run_settings_for(job)
        over = dict(o.split("=", 1) for o in export.bridge_overrides(job))
        assert over["ddp.overlap_grad_reduce"] == str(s.overlap_grad_reduce).lower()
        assert over["ddp.overlap_param_gather"] == str(s.overlap_param_gather).lower()
        assert over["comm_overlap.tp_comm_overlap"] == str(s.tp_comm_overlap).lower()
        assert (over["mixed_precision"] == "bf16_with_fp8_current_scaling_mixed") == (s.fp8_format is not None)


def test_settings_round_trip_and_reject_unknown_keys():
    s = run_settings_for(_job("fp8", use_distributed_optimizer=True))
    assert RunSettings.model_validate_json(s.model_dump_json()) == s
    with pytest.raises(ValueError, match="extra"):
        RunSettings.model_validate({**s.model_dump(), "overlap_p2p_comm": True})
    with pytest.raises(ValueError, match="fp8_recipe"):
        RunSettings.model_validate({**s.model_dump(), "fp8_recipe": "delayed"})
