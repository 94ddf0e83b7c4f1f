"""`autotune search` when things go wrong, with real processes: failing trials, a killed or interrupted
driver, and bad input. tiny-moe on 2 CPU ranks keeps each real trial to seconds.

Process leaks are found by a tag: each driver gets a unique AUTOTUNE_TEST_TAG in its environment, which
every process it starts inherits (Ray's GCS and raylet, Ray workers, torchrun, the ranks). Matching on
/proc/<pid>/environ never counts another session's Ray or trials.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from autotune import search as S
from autotune.cluster import ClusterSpec
from autotune.config import Workload
from autotune.model_catalog import get_model
from autotune.space_files import default_space
from tests.own_process import in_own_process, timeout

REPO = Path(__file__).resolve().parent.parent
TINY = ["search", "--model", "tiny-moe", "--gpus", "2", "--backend", "cpu", "--seq-len", "64",
        "--global-batch-size", "8", "--trial-timeout", "120"]


def tagged_processes(tag: str) -> list[str]:
    """Live processes whose environment carries AUTOTUNE_TEST_TAG=tag, as 'pid: cmdline'."""
    needle = f"AUTOTUNE_TEST_TAG={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(f"{entry.name}: {cmd[:160]}")
    return found


def is_trial_process(line: str) -> bool:
    """A trial's own process (torchrun, a rank, the Ray worker running it), by its 'pid: cmdline'."""
    cmd = line.split(":", 1)[1].strip()
    return "torch.distributed.run" in cmd or "trial_runner" in cmd or cmd.startswith("ray::trial")


def wait_until_gone(tag: str, timeout_s: float, only=lambda line: True) -> list[str]:
    deadline = time.time() + timeout_s
    while (left := [p for p in tagged_processes(tag) if only(p)]) and time.time() < deadline:
        time.sleep(0.5)
    return left


def kill_tagged(tag: str) -> None:
    for line in tagged_processes(tag):
        try:
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
        except OSError:
            pass


def _default_sigint() -> None:
    # A test run started in the background by a non-interactive shell has SIGINT ignored, and a child
    # inherits that: the driver must start with the default, as from a terminal, for Ctrl-C to reach it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_search(args: list[str], tag: str) -> subprocess.Popen:
    env = dict(os.environ, AUTOTUNE_TEST_TAG=tag, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "autotune.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def jsonl(folder: Path) -> list[dict]:
    path = folder / "trials.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the search exited ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def study_folder(out: Path) -> Path | None:
    found = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
    return found[0] if found else None


# --- (a) failing trials are classified and the study goes on ------------------------------------------

@pytest.mark.slow
@timeout(300)
@in_own_process  # it starts Ray in the driver: not in the main test session (tests/own_process.py)
def test_crash_hang_and_oom_are_classified_and_the_study_goes_on(tmp_path):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    model = get_model("tiny-moe")
    req = S.SearchRequest(model=model, cluster=ClusterSpec.build(2), workload=Workload(seq_length=64,
                          global_batch_size=8), space=default_space(model), backend="cpu", num_trials=4,
                          trial_time_limit_s=120, out_root=tmp_path)
    phase = S.analytic_phase(req)
    phase.backend = "cpu"
    faults = {  # trial number -> TrialSpec fields (test-only fault injection of trial_runner.spec)
        0: dict(fault="crash", fault_rank=1),
        1: dict(fault="hang", fault_rank=0, time_limit_s=15.0),
        # A 16M-token vocabulary (a 4 GB fp32 embedding table) cannot be allocated under a 3 GiB cap. (A cap
        # near the ~1-2 GiB a 2-rank run maps anyway fails earlier, in thread creation: also oom, see
        # tests/trial_runner/test_trial_classify.py.)
        2: dict(memory_cap_gib=3.0),
    }

    def inject(number, spec):
        update = dict(faults.get(number, {}))
        if number == 2:
            model = type(spec.model).model_validate({**spec.model.to_dict(), "vocab_size": 16_000_000})
            update["model"] = model
        return spec.model_copy(update=update)

    recs = S.run_trials(phase, adjust_spec=inject)

    by_number = {r.number: r for r in recs}
    assert [by_number[n].status for n in range(4)] == ["crashed", "timeout", "oom", "completed"], \
        [(r.number, r.status, r.reason) for r in recs]
    assert "injected crash on rank 1" in by_number[0].reason
    assert "time_limit_s=15.0" in by_number[1].reason
    assert by_number[3].measured["tokens_per_s_per_gpu"] > 0
    assert len({r.config_key for r in recs}) == 4  # a failed config is not measured again
    states = [t.state.name for t in phase.study.get_trials()]
    assert states == ["FAIL", "FAIL", "FAIL", "COMPLETE"]
    lines = jsonl(phase.folder)
    assert [line["status"] for line in lines] == ["crashed", "timeout", "oom", "completed"]


# --- (b) SIGKILL of the driver, then --resume; (c) no process left after a normal exit ------------------

@pytest.mark.slow
@pytest.mark.timeout(480)
def test_killed_driver_resumes_without_rerunning_completed_trials(tmp_path):
    out, tag = tmp_path / "out", uuid.uuid4().hex
    proc = start_search(TINY + ["--trials", "3", "--out", str(out), "--json"], tag)
    try:
        wait_for(lambda: (f := study_folder(out)) is not None
                 and any(r["status"] == "completed" for r in jsonl(f))
                 and (f / "trials" / f"{len(jsonl(f)):04d}").exists(),
                 240, "a completed trial and the next one started", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    folder = study_folder(out)
    before = jsonl(folder)
    completed = {r["config_key"]: r for r in before if r["status"] == "completed"}
    assert completed, before
    # Trials the driver had started on Ray but not recorded when it died: usually one; none if, on a loaded
    # machine, it finished just before the kill (the next one may then be asked but not yet placed).
    in_flight = {int(d.name) for d in (folder / "trials").iterdir()} - {r["number"] for r in before}
    # Nothing of the killed driver's trials survives it: its Ray worker dies with the raylet (Ray's
    # fate-sharing), torchrun with that worker (PDEATHSIG) and each rank with torchrun or, failing that,
    # by watching its launcher (trial_runner.procs).
    try:
        assert wait_until_gone(tag, 30, only=is_trial_process) == []
        # Ray's own DashboardAgent and RuntimeEnvAgent see the raylet die at once but then try to report its
        # log tail to the (equally dead) GCS, with a 60 s timeout hard-coded in Ray
        # (ray/_private/process_watcher.py -> ray/_private/utils.py publish_error_to_driver), so they exit
        # about a minute later; they hold no trial resources. Waiting for them keeps the resume clean.
        assert wait_until_gone(tag, 90) == []
    finally:
        kill_tagged(tag)  # only after a failed assertion is there anything left to end

    tag2 = uuid.uuid4().hex
    resumed = start_search(TINY + ["--trials", "1", "--out", str(out), "--json", "--resume"], tag2)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    trials = summary["trials"]
    for key, rec in completed.items():  # every completed trial kept, with its measurement
        kept = [t for t in trials if t["config_key"] == key]
        assert len(kept) == 1 and kept[0]["status"] == "completed" and kept[0]["measured"] == rec["measured"]
    interrupted = {t["number"] for t in trials if t["status"] == "interrupted"}
    # The trial in flight when the driver died, and no other, is closed as interrupted.
    assert in_flight <= interrupted and len(interrupted) <= 1, (in_flight, interrupted)
    assert not interrupted & {r["number"] for r in before}
    new = [t for t in trials if t["number"] > max(r["number"] for r in before) and t["status"] != "interrupted"]
    assert len(new) == 1 and new[0]["config_key"] not in completed
    assert len({t["config_key"] for t in trials}) == len(trials)  # no config ran twice
    assert summary["best"]["source"] == "measured"
    # (c) a normal exit leaves no Ray, torchrun or rank process of ours behind.
    assert wait_until_gone(tag2, 20) == []


# --- (c) Ctrl-C mid-trial ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_stops_the_trial_and_leaves_no_process(tmp_path):
    out, tag = tmp_path / "out", uuid.uuid4().hex
    proc = start_search(TINY + ["--trials", "2", "--out", str(out)], tag)
    try:
        def rank_running() -> bool:
            f = study_folder(out)
            log = f / "trials" / "0000" / "result.json.logs" / "torchrun.log" if f else None
            return log is not None and log.exists() and "trial_runner.worker started" in log.read_text(errors="replace")

        wait_for(rank_running, 180, "the first trial's ranks to start", proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            kill_tagged(tag)
    # The exit code is not checked here: see test_ctrl_c_exits_130 (cli.main drops typer's 130 today).
    assert "Traceback" not in stderr, stderr[-3000:]
    left = wait_until_gone(tag, 20)
    kill_tagged(tag)
    assert left == [], left
    # The first trial is in flight when Ctrl-C is sent, but on a loaded machine it may finish before the
    # driver takes the signal; either way it is recorded, and whatever was in flight is "interrupted".
    statuses = [line["status"] for line in jsonl(study_folder(out))]
    assert statuses in (["interrupted"], ["completed"], ["completed", "interrupted"]), (statuses, stderr[-3000:])


def test_ctrl_c_exits_130(monkeypatch, capsys, tmp_path):
    from autotune import search_display
    from autotune.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search_display, "run_search", interrupted)
    assert main(["search", "--model", "tiny-moe", "--gpus", "2", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "aborted"


# --- (d) bad input: exit 2 and one line, from the installed entry point ----------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("extra,match", [
    (["--address", "127.0.0.1:1"], "cannot reach Ray at --address 127.0.0.1:1"),  # on the real-trial path
    (["--storage", "sqlite:////nonexistent-dir/x/study.db"], "cannot open Optuna storage"),
    (["--gpus-per-node", "0"], "--gpus-per-node must be a positive integer, got 0"),
])
def test_bad_input_on_the_cpu_path_is_exit_2_and_one_line(tmp_path, extra, match):
    args = TINY + ["--trials", "1", "--out", str(tmp_path)] + extra
    tag = uuid.uuid4().hex
    proc = start_search(args, tag)
    _, stderr = proc.communicate(timeout=100)
    assert proc.returncode == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: ") and match in stderr, stderr
    assert wait_until_gone(tag, 10) == []
