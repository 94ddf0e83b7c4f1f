"""The prior sampler (autotune/search_sampler.py): seeds, no repeats, and learning from measurements."""

from __future__ import annotations

import numpy as np
import pytest

from autotune.search_sampler import Observation, PriorSampler


def _sampler(pred, peak=None, mesh=None, capacity=80.0, **kw) -> PriorSampler:
    n = len(pred)
    return PriorSampler(predicted_tokens=np.asarray(pred, float),
                        predicted_peak_gib=np.asarray(peak if peak is not None else [10.0] * n, float),
                        mesh=np.asarray(mesh if mesh is not None else [(1, 1, 1, 1, 1)] * n),
                        capacity_gib=capacity, key_of=lambda i: f"c{i}", **kw)


def _drain(s: PriorSampler) -> list[int]:
    out = []
    while (i := s.next_index()) is not None:
        out.append(i)
    return out


def test_seeds_are_the_predicted_best_in_order():
    s = _sampler([1.0, 5.0, 3.0, 4.0, 2.0], num_seeds=3)
    assert [s.next_index() for _ in range(3)] == [1, 3, 2]


def test_every_candidate_once_then_none():
    s = _sampler(np.linspace(1, 2, 50), num_seeds=2, seed=7)
    drawn = _drain(s)
    assert sorted(drawn) == list(range(50))
    assert s.next_index() is None


def test_configs_tried_in_an_earlier_session_are_skipped():
    s = _sampler([5.0, 4.0, 3.0], num_seeds=3)
    s.mark_tried("c0")  # measured before a resume: known by key only
    assert _drain(s) == [1, 2]


def test_sampling_prefers_fast_configs():
    pred = np.concatenate([[100.0] * 5, [50.0] * 995])
    hits = 0
    for seed in range(20):
        s = _sampler(pred, num_seeds=0, seed=seed)
        hits += s.next_index() < 5
    assert hits >= 18  # the 5 fast configs hold ~all the mass at temperature 0.05


def test_an_oom_rules_out_configs_predicted_to_use_more_memory():
    peak = [70.0, 75.0, 60.0, 50.0]
    s = _sampler([4.0, 3.0, 2.0, 1.0], peak=peak, num_seeds=10)
    assert s.next_index() == 0
    s.observe(Observation(mesh=(1, 1, 1, 1, 1), status="oom", predicted_tokens_per_s_per_gpu=4.0,
                          predicted_peak_memory_gib=70.0))
    assert s.memory_ratio() == pytest.approx(80.0 / 70.0)
    assert not s.peak[0] * s.memory_ratio() <= s.capacity_gib  # the same predicted peak is ruled out too
    assert _drain(s) == [2, 3]  # 75 GiB predicted now means > 80 GiB: never drawn


def test_measured_memory_above_prediction_scales_every_peak():
    s = _sampler([2.0, 1.0], peak=[40.0, 70.0], num_seeds=10)
    s.next_index()
    s.observe(Observation(mesh=(1, 1, 1, 1, 1), status="completed", predicted_tokens_per_s_per_gpu=2.0,
                          predicted_peak_memory_gib=40.0, measured_tokens_per_s_per_gpu=2.0,
                          measured_peak_memory_gib=50.0))
    assert s.memory_ratio() == pytest.approx(1.25)
    assert s.next_index() is None  # 70 x 1.25 = 87.5 > 80


def test_memory_measurements_can_be_ignored():
    s = _sampler([2.0, 1.0], peak=[40.0, 75.0], num_seeds=10, use_memory_measurements=False)
    s.observe(Observation(mesh=(1, 1, 1, 1, 1), status="oom", predicted_tokens_per_s_per_gpu=2.0,
                          predicted_peak_memory_gib=40.0))
    assert s.memory_ratio() == 1.0


def test_a_slow_mesh_sinks_with_its_variants():
    # Two meshes, A predicted slightly faster. A measured at half its prediction: B's configs now lead.
    mesh = [(2, 1, 1, 1, 1)] * 3 + [(4, 1, 1, 1, 1)] * 3
    s = _sampler([10.0, 9.9, 9.8, 9.0, 8.9, 8.8], mesh=mesh, num_seeds=1, seed=0)
    assert s.next_index() == 0
    s.observe(Observation(mesh=(2, 1, 1, 1, 1), status="completed", predicted_tokens_per_s_per_gpu=10.0,
                          predicted_peak_memory_gib=10.0, measured_tokens_per_s_per_gpu=5.0))
    corr = s.speed_correction()
    assert corr[:3] == pytest.approx([0.5] * 3)
    assert corr[3:] == pytest.approx([0.5] * 3)  # unmeasured meshes take the median ratio ...
    s.observe(Observation(mesh=(4, 1, 1, 1, 1), status="completed", predicted_tokens_per_s_per_gpu=9.0,
                          predicted_peak_memory_gib=10.0, measured_tokens_per_s_per_gpu=9.0))
    corr = s.speed_correction()
    assert corr[:3] == pytest.approx([0.5] * 3) and corr[3:] == pytest.approx([1.0] * 3)  # ... until measured
    assert s.next_index() in (3, 4, 5)
