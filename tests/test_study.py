"""The study (autotune/study.py) and the trial loop (autotune/search.py) with a scripted scheduler instead of Ray."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from autotune import search as S
from autotune import study as ST
from autotune.cluster import ClusterSpec
from autotune.config import Workload
from autotune.constraints import Violation
from autotune.errors import ConfigError
from autotune.model_catalog import get_model
from autotune.space_files import default_space
from trial_runner.spec import TrialResult


def _request(tmp_path: Path, **kw) -> S.SearchRequest:
    model = get_model("tiny-moe")
    return S.SearchRequest(model=model, cluster=ClusterSpec.build(4), workload=Workload(seq_length=64,
                           global_batch_size=8), space=default_space(model), out_root=tmp_path, **kw)


def test_study_name_is_stable_and_tracks_the_workload(tmp_path):
    r = _request(tmp_path)
    name = ST.study_name(r.model, r.cluster, r.workload, r.space)
    assert name == ST.study_name(r.model, r.cluster, r.workload, r.space)
    assert name.startswith("tiny-moe-4xh100-80gb-") and len(name.rsplit("-", 1)[1]) == 8
    other = ST.study_name(r.model, r.cluster, Workload(seq_length=128, global_batch_size=8), r.space)
    assert other != name
    assert ST.study_name(r.model, r.cluster, r.workload, r.space, backend="cpu") == name + "-cpu"


@pytest.mark.parametrize("bad", ["", "a/b", ".hidden"])
def test_bad_study_names(bad):
    with pytest.raises(ConfigError, match="--study-name must be a plain folder name"):
        ST.check_study_name(bad)


def test_unwritable_out_root(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="--out .* is not writable"):
        ST.study_dir(tmp_path / "file" / "sub", "s")


def test_bad_storage_url(tmp_path):
    with pytest.raises(ConfigError, match="cannot open Optuna storage 'nope://x'"):
        ST.open_study("s", tmp_path, "nope://x")


def test_sqlite_storage_and_journal_default(tmp_path):
    a = ST.open_study("s", tmp_path, f"sqlite:///{tmp_path / 's.db'}")
    a.set_user_attr("k", 1)
    assert ST.open_study("s", tmp_path, f"sqlite:///{tmp_path / 's.db'}").user_attrs == {"k": 1}
    ST.open_study("j", tmp_path)
    assert (tmp_path / ST.JOURNAL_FILE).is_file()


def test_append_jsonl_one_line_per_record(tmp_path):
    p = tmp_path / "t.jsonl"
    ST.append_jsonl(p, {"a": 1})
    ST.append_jsonl(p, {"a": float("nan")})
    lines = p.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == {"a": 1}


class ScriptedScheduler:
    """Stands in for RayScheduler: each trial finishes at once with the scripted result."""

    dashboard_url = "http://127.0.0.1:0"

    def __init__(self, outcome):
        self.outcome = outcome  # (spec, n-th submission) -> (status, tokens/s, peak GiB)
        self.submitted: list[str] = []
        self.cancelled: list[int] = []  # trial numbers

    def total_gpus(self) -> int:
        return 8

    def submit(self, number, spec, label, gpus_per_node, out_dir):
        self.submitted.append(spec.job.parallel.canonical_key())
        status, tokens, peak = self.outcome(spec, len(self.submitted) - 1)
        ok = status == "completed"
        return (number, TrialResult(status=status, config_key=spec.job.parallel.canonical_key(),
                                    num_ranks=spec.num_ranks, backend=spec.backend,
                                    tokens_per_s_per_gpu=tokens if ok else None, step_time_s=1.0 if ok else None,
                                    peak_memory_gib=peak, error=None if ok else status))

    def wait_any(self, running, timeout_s=1.0):
        return [(h, h[1]) for h in running]

    def cancel(self, handle):
        self.cancelled.append(handle[0])

    def shutdown(self):
        pass


def _phase(tmp_path, backend="gpu", **kw) -> S.AnalyticPhase:
    phase = S.analytic_phase(_request(tmp_path, backend=backend, **kw))
    phase.backend = backend
    return phase


def test_trials_are_recorded_told_and_never_repeated_across_resume(tmp_path):
    sched = ScriptedScheduler(lambda spec, n: ("completed", 100.0 + n, 1.0))
    phase = _phase(tmp_path, num_trials=3)
    recs = S.run_trials(phase, scheduler=sched)
    assert [r.status for r in recs] == ["completed"] * 3
    lines = (phase.folder / ST.TRIALS_FILE).read_text().splitlines()
    assert [json.loads(x)["number"] for x in lines] == [0, 1, 2]
    assert phase.study.best_value == pytest.approx(102.0)

    with pytest.raises(ConfigError, match="already has 3 trials .* pass --resume"):
        S.run_trials(_phase(tmp_path, num_trials=3), scheduler=sched)
    again = _phase(tmp_path, num_trials=3, resume=True)
    assert again.name == phase.name
    recs = S.run_trials(again, scheduler=sched)
    assert len(recs) == 6 and len(set(sched.submitted)) == 6  # no config measured twice

    doc = S.write_best(again, recs)
    assert doc["source"] == "measured" and doc["measured"]["tokens_per_s_per_gpu"] == pytest.approx(105.0)


def test_an_oom_teaches_the_memory_correction(tmp_path):
    def outcome(spec, n):
        return ("oom", None, None) if n == 0 else ("completed", 10.0, 0.5)

    sched = ScriptedScheduler(outcome)
    phase = _phase(tmp_path, num_trials=4)
    recs = S.run_trials(phase, scheduler=sched)
    oom = recs[0]
    assert oom.status == "oom" and oom.reason == "oom"
    res = phase.result
    exact = {res.parallel_config(i).canonical_key(): float(phase.ranked.peak_memory_gib[i])
             for i in range(res.num_feasible)}
    # Every config chosen after the OOM is predicted to need less memory than the one that ran out,
    # although configs predicted faster than the slowest of them need at least as much (so the
    # correction, not the ranking, kept them out).
    later = [exact[r.config_key] for r in recs[1:]]
    assert len(later) == 3 and all(p < exact[oom.config_key] for p in later), (exact[oom.config_key], later)
    speed = {res.parallel_config(i).canonical_key(): float(phase.ranked.tokens_per_s_per_gpu[i])
             for i in range(res.num_feasible)}
    slowest_later = min(speed[r.config_key] for r in recs[1:])
    skipped = [k for k, peak in exact.items() if k != oom.config_key and peak >= exact[oom.config_key]
               and speed[k] > slowest_later]
    assert skipped
    assert phase.study.trials[0].state.name == "FAIL"


def test_a_config_the_rules_reject_is_pruned_with_its_reason(tmp_path, monkeypatch):
    calls = []

    def fake_violations(model, cluster, job, allow_cross_node_tp=False):
        calls.append(job)
        return [Violation(rule="memory", message="too big", fix="smaller")] if len(calls) == 1 else []

    monkeypatch.setattr(S.constraints, "violations", fake_violations)
    sched = ScriptedScheduler(lambda spec, n: ("completed", 5.0, 0.1))
    phase = _phase(tmp_path, num_trials=1)
    recs = S.run_trials(phase, scheduler=sched)
    assert [r.status for r in recs] == ["pruned", "completed"]
    assert recs[0].reason == "memory: too big"
    assert phase.study.trials[0].state.name == "PRUNED"
    assert phase.study.trials[0].user_attrs["reason"] == "memory: too big"
    assert len(sched.submitted) == 1 and sched.submitted[0] != recs[0].config_key


def test_interrupted_trials_count_as_tried(tmp_path):
    phase = _phase(tmp_path, num_trials=1)
    t = phase.study.ask()  # a search that died mid-trial
    t.set_user_attr(ST.ATTR_KEY, "tp1.pp1")
    assert ST.close_interrupted(phase.study) == 1
    assert [r.status for r in ST.records(phase.study)] == ["interrupted"]


def test_analytic_best_when_nothing_was_measured(tmp_path):
    phase = _phase(tmp_path, backend="analytic")
    doc = S.write_best(phase, [])
    assert doc["source"] == "predicted" and doc["measured"] is None
    assert doc["predicted"] == phase.ranked.predicted(phase.top(1)[0])


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400)])
def test_parse_duration(text, seconds):
    assert S.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "3x", "m", "1h 30m", "-5m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ConfigError, match="--time-budget takes a duration"):
        S.parse_duration(text)


def test_backend_resolution(tmp_path):
    r = _request(tmp_path)
    assert S.resolve_backend(r, 0)[0] == "analytic" and "need 4 GPUs" in S.resolve_backend(r, 0)[1]
    assert S.resolve_backend(r, 8) == ("gpu", "")
    assert S.resolve_backend(r, None) == ("gpu", "")
    with pytest.raises(ConfigError, match="--backend gpu needs 4 GPUs"):
        S.resolve_backend(_request(tmp_path, backend="gpu"), 2)
    with pytest.raises(ConfigError, match="--backend must be one of"):
        _request(tmp_path, backend="tpu")


def test_ctrl_c_stops_trials_in_flight_and_records_them(tmp_path):
    class Interrupted(ScriptedScheduler):
        def wait_any(self, running, timeout_s=1.0):
            raise KeyboardInterrupt

    sched = Interrupted(lambda spec, n: ("completed", 1.0, 0.1))
    phase = _phase(tmp_path, num_trials=1)
    with pytest.raises(KeyboardInterrupt):
        S.run_trials(phase, scheduler=sched)
    assert sched.cancelled == [0]
    assert [r.status for r in ST.records(phase.study)] == ["interrupted"]
    assert phase.study.trials[0].state.name == "FAIL"


@pytest.mark.usefixtures("python_sigint")
def test_ctrl_c_while_a_finished_trial_is_recorded_loses_nothing(tmp_path, monkeypatch):
    """Ctrl-C landing while a completed trial is written to trials.jsonl: the record is finished first,
    then the search stops. (Before held_sigint, the trial had left `running` and was lost.)"""
    real_append = S.append_jsonl

    def ctrl_c_then_append(path, record):
        signal.raise_signal(signal.SIGINT)  # arrives here, halfway through recording the trial
        real_append(path, record)

    monkeypatch.setattr(S, "append_jsonl", ctrl_c_then_append)
    sched = ScriptedScheduler(lambda spec, n: ("completed", 7.0, 0.1))  # 8 GPUs: trials 0 and 1 run together
    phase = _phase(tmp_path, num_trials=4)
    with pytest.raises(KeyboardInterrupt):
        S.run_trials(phase, scheduler=sched)
    # Both trials the scheduler handed back are recorded, measurement and all; no new trial started.
    lines = [json.loads(x) for x in (phase.folder / ST.TRIALS_FILE).read_text().splitlines()]
    assert [(x["number"], x["status"]) for x in lines] == [(0, "completed"), (1, "completed")]
    assert [x["measured"]["tokens_per_s_per_gpu"] for x in lines] == [7.0, 7.0]
    assert [t.state.name for t in phase.study.trials] == ["COMPLETE", "COMPLETE"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler put back


@pytest.mark.usefixtures("python_sigint")
def test_ctrl_c_while_a_trial_is_submitted_records_it_as_interrupted(tmp_path):
    class CtrlCOnSubmit(ScriptedScheduler):
        def submit(self, *args):
            handle = super().submit(*args)
            signal.raise_signal(signal.SIGINT)  # the scheduler has it, `running` not yet
            return handle

    sched = CtrlCOnSubmit(lambda spec, n: ("completed", 1.0, 0.1))
    phase = _phase(tmp_path, num_trials=2)
    with pytest.raises(KeyboardInterrupt):
        S.run_trials(phase, scheduler=sched)
    assert sched.cancelled == [0]
    assert [(r.number, r.status) for r in ST.records(phase.study)] == [(0, "interrupted")]
    lines = [json.loads(x) for x in (phase.folder / ST.TRIALS_FILE).read_text().splitlines()]
    assert [(x["number"], x["status"]) for x in lines] == [(0, "interrupted")]


def test_time_budget_stops_new_trials_but_lets_running_ones_finish(tmp_path, monkeypatch):
    """--time-budget: no trial starts once it is spent; trials in flight still finish and are recorded.
    The search's clock is scripted: each wait for results takes 10 s of it."""
    now = [0.0]
    monkeypatch.setattr(S, "clock", lambda: now[0])

    class Slow(ScriptedScheduler):
        def wait_any(self, running, timeout_s=1.0):
            now[0] += 10.0
            return super().wait_any(running[:1], timeout_s)  # one trial finishes per wait

    sched = Slow(lambda spec, n: ("completed", 1.0 + n, 0.1))  # 8 GPUs: two 4-GPU trials at a time
    seen, events = [], []

    def on_event(p):
        seen.append((p.finished, p.running))
        events[:] = p.events

    phase = _phase(tmp_path, num_trials=10, time_budget_s=25.0)
    recs = S.run_trials(phase, scheduler=sched, on_event=on_event)
    # t=0: trials 0, 1 start; t=10: 0 ends, 2 starts; t=20: 1 ends, 3 starts; t=30: 2 ends, budget spent;
    # t=40: 3 ends.
    assert len(sched.submitted) == 4
    assert [r.status for r in recs] == ["completed"] * 4
    assert seen[-1] == (4, 0)
    assert "--time-budget spent after 4 trials: no new trial starts, waiting for 1 running" in events


def test_cpu_trials_of_a_model_too_big_for_the_host_are_refused_up_front(tmp_path):
    """llama3-8b on 4 CPU ranks: even its leanest config needs far more than a host's RAM, so the search
    stops before starting Ray with one line, instead of running trials that all run out of memory."""
    big = S.SearchRequest(model=get_model("llama3-8b"), cluster=ClusterSpec.build(4),
                          workload=Workload(seq_length=64, global_batch_size=8),
                          space=default_space(get_model("llama3-8b")), out_root=tmp_path, backend="cpu")
    phase = S.analytic_phase(big)
    phase.backend = "cpu"
    with pytest.raises(ConfigError, match=r"--backend cpu: the leanest feasible config of llama3-8b needs about"):
        S.check_cpu_trials_fit(phase, host_gib=64.0)
    tiny = _phase(tmp_path, backend="cpu")
    S.check_cpu_trials_fit(tiny, host_gib=16.0)  # tiny-moe's 4 ranks fit a laptop
