"""Shared helpers for the trial runner tests: real torchrun launches of real Megatron Core on CPU.

Launches are expensive (~10 s for 2 ranks, ~20 s for 4, mostly importing Megatron), so each
distinct trial runs once per session and several tests read its result.
"""

from __future__ import annotations

import math

import pytest

from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.model_catalog import get_model
from trial_runner.launch import run_trial
from trial_runner.spec import TrialResult, TrialSpec


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long end-to-end trial runs (real Megatron Core, several ranks)")


def make_spec(model: str = "tiny-dense", num_gpus: int = 2, *, seq_length: int = 64, global_batch_size: int = 8,
              time_limit_s: float = 120, model_updates: dict | None = None, **kwargs) -> TrialSpec:
    """A CPU trial spec: ParallelConfig fields and TrialSpec fields may both be given as kwargs."""
    spec_fields = set(TrialSpec.model_fields)
    parallel = ParallelConfig(**{k: v for k, v in kwargs.items() if k not in spec_fields})
    model_spec = get_model(model)
    if model_updates:
        model_spec = type(model_spec).model_validate({**model_spec.to_dict(), **model_updates})
    job = JobConfig(num_gpus=num_gpus, parallel=parallel,
                    workload=Workload(seq_length=seq_length, global_batch_size=global_batch_size))
    extra = {k: v for k, v in kwargs.items() if k in spec_fields}
    return TrialSpec(model=model_spec, job=job, backend="cpu", warmup_iters=extra.pop("warmup_iters", 2),
                     measured_iters=extra.pop("measured_iters", 3), time_limit_s=time_limit_s, **extra)


class TrialCache:
    """Runs each named trial once per session."""

    def __init__(self, tmp_dir):
        self.tmp_dir = tmp_dir
        self.results: dict[str, TrialResult] = {}

    def get(self, name: str, spec: TrialSpec) -> TrialResult:
        if name not in self.results:
            self.results[name] = run_trial(spec, spec.num_ranks, self.tmp_dir / f"{name}.json")
        return self.results[name]


@pytest.fixture(name="make_spec", scope="session")
def make_spec_fixture():
    return make_spec


@pytest.fixture(name="assert_trained", scope="session")
def assert_trained_fixture():
    return assert_trained


@pytest.fixture(scope="session")
def trials(tmp_path_factory) -> TrialCache:
    return TrialCache(tmp_path_factory.mktemp("trials"))


def assert_trained(result: TrialResult) -> None:
    """A completed trial with every measurement present and a loss that is finite and falling."""
    assert result.status == "completed", f"{result.status}: {result.error}\n{result.log_tail}"
    assert len(result.losses) >= 3 and all(math.isfinite(x) for x in result.losses)
    assert result.losses[-1] < result.losses[0] - 0.1, f"loss did not fall: {result.losses}"
    assert result.tokens_per_s_per_gpu and result.tokens_per_s_per_gpu > 0
    assert 0 < result.step_time_min_s <= result.step_time_s <= result.step_time_max_s
    assert len(result.peak_memory_reserved_gib_per_rank) == result.num_ranks
    assert result.peak_memory_gib == max(result.peak_memory_reserved_gib_per_rank) > 0
    assert len(result.num_parameters_per_rank) == result.num_ranks and min(result.num_parameters_per_rank) > 0
    t = result.timings
    assert all(x is not None and x > 0 for x in (t.launch_s, t.init_s, t.warmup_s, t.measured_s, t.total_s))
    assert result.versions.torch and result.versions.megatron_core
    assert result.layer_spec == "local" and result.dtype == "float32"
