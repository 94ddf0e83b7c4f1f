"""kill_tree ends a process tree even when children moved to their own sessions (as torchrun's do), and no
process of a trial outlives its launcher (PDEATHSIG, the ranks' launcher watchdog, the trial token)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from trial_runner import procs

_REPO = Path(__file__).resolve().parents[2]

# A parent that starts a child in a new session, prints the child's pid, then sleeps: the shape of
# torchrun (own session) -> worker (start_new_session=True).
_PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(60)
def test_kill_tree_reaches_children_in_other_sessions():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child = int(parent.stdout.readline())
    assert procs.is_alive(child) and child in procs.descendants(parent.pid)
    t0 = time.monotonic()
    killed = procs.kill_tree(parent.pid, grace_s=5)
    parent.wait(timeout=10)
    assert {parent.pid, child} <= set(killed)
    assert not procs.is_alive(child) and not procs.is_alive(parent.pid)
    assert time.monotonic() - t0 < 6  # SIGTERM sufficed: no wait for the SIGKILL grace


# A rank as trial_runner.worker sets it up: faulthandler dumps every thread's stack on SIGTERM, then lets
# the signal end the process (chain=True). Its parent starts it in a new session, as torchrun does.
_DUMPING_RANK = (
    "import faulthandler, signal, threading, time\n"
    "faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)\n"
    "for _ in range(8):\n"
    "    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)
_PARENT_OF_DUMPING_RANK = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', sys.argv[1]], start_new_session=True,\n"
    "                         stdout=subprocess.PIPE, stderr=open(sys.argv[2], 'w'), text=True)\n"
    "child.stdout.readline()\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.mark.timeout(60)
def test_kill_tree_signals_each_rank_once_and_before_torchrun(tmp_path, monkeypatch):
    """A second SIGTERM that lands while a rank's faulthandler is dumping its stacks ends the rank mid-dump
    (the chained handler runs with SA_NODEFER and faulthandler skips a nested dump), and so does torchrun's
    exit (PR_SET_PDEATHSIG). So kill_tree signals each rank once (its group or itself, not both), before
    the root."""
    sent = []
    real_kill, real_killpg = os.kill, os.killpg
    monkeypatch.setattr(procs.os, "kill", lambda pid, sig: (sent.append((pid, sig)), real_kill(pid, sig)))
    monkeypatch.setattr(procs.os, "killpg", lambda pg, sig: (sent.append((pg, sig)), real_killpg(pg, sig)))
    log = tmp_path / "rank.stderr"
    parent = subprocess.Popen([sys.executable, "-c", _PARENT_OF_DUMPING_RANK, _DUMPING_RANK, str(log)],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(parent.stdout.readline())
    procs.kill_tree(parent.pid, grace_s=5)
    parent.wait(timeout=10)
    # Both lead their own process group (pgid = pid), so a group signal and a direct one name the same id.
    terms = [target for target, sig in sent if sig == signal.SIGTERM]
    assert terms.count(child) == 1, sent
    assert parent.pid in terms and terms.index(child) < terms.index(parent.pid), sent
    # The rank's dump is whole: the main thread and the 8 sleeping ones.
    assert log.read_text().count("(most recent call first)") == 9, log.read_text()


def test_is_alive_false_for_unknown_pid():
    assert not procs.is_alive(2**22 + 12345)


# A rank's shape for the watchdog tests: it leads its own process group (torchrun starts it so),
# watches the launcher named in its environment, starts a child in its group, prints that child's
# pid, then sleeps.
_RANK = """
import subprocess, sys, time
from trial_runner import procs
procs.watch_launcher(interval_s=0.2)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (alive := [p for p in pids if procs.is_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _start_rank(launcher_pid: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(_REPO), **{procs.LAUNCHER_ENV: procs.identity(launcher_pid)})
    return subprocess.Popen([sys.executable, "-c", _RANK], stdout=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


@pytest.mark.timeout(60)
def test_a_rank_and_its_children_end_when_the_launcher_is_killed():
    # The launcher here is not the rank's parent, so PDEATHSIG cannot help: only the watchdog can.
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    rank = _start_rank(launcher.pid)
    try:
        child = int(rank.stdout.readline())
        assert procs.is_alive(rank.pid) and procs.is_alive(child)
        launcher.kill()
        launcher.wait()
        assert _wait_gone([rank.pid, child], 20) == []
        assert rank.wait(timeout=10) == -signal.SIGKILL
    finally:
        procs.kill_tree(rank.pid, grace_s=1)
        launcher.kill()


@pytest.mark.timeout(60)
def test_a_rank_whose_launcher_is_already_gone_ends_at_once():
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    ident = procs.identity(launcher.pid)
    launcher.kill()
    launcher.wait()
    env = dict(os.environ, PYTHONPATH=str(_REPO), **{procs.LAUNCHER_ENV: ident})
    rank = subprocess.run([sys.executable, "-c", _RANK], capture_output=True, text=True, env=env,
                          start_new_session=True, timeout=30)
    assert rank.returncode == -signal.SIGKILL and rank.stdout == "", (rank.returncode, rank.stdout, rank.stderr)


def test_a_reused_pid_is_not_the_launcher():
    me = procs.identity(os.getpid())
    assert procs.same_process_alive(me)
    pid, ticks = me.split(":")
    assert not procs.same_process_alive(f"{pid}:{int(ticks) + 1}")  # same pid, later start: another process


@pytest.mark.timeout(60)
def test_die_with_parent_ends_a_child_whose_parent_is_not_the_expected_one():
    # As if the launcher died between fork and prctl: the child is already someone else's.
    code = "from trial_runner import procs; procs.die_with_parent(expected_parent=1 if __import__('os').getppid() != 1 else 2); print('survived')"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=_REPO, timeout=30)
    assert child.returncode == -signal.SIGKILL and "survived" not in child.stdout


@pytest.mark.timeout(60)
def test_kill_tree_also_ends_processes_of_the_trial_that_left_the_tree():
    token = uuid.uuid4().hex
    root = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    # Not a descendant of root: as a rank re-parented to init after its torchrun died.
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True,
                             env=dict(os.environ, **{procs.TRIAL_TOKEN_ENV: token}))
    try:
        assert stray.pid not in procs.descendants(root.pid) and procs.carrying(token) == [stray.pid]
        killed = procs.kill_tree(root.pid, grace_s=5, token=token)
        assert stray.pid in killed
        assert stray.wait(timeout=10) == -signal.SIGTERM and root.wait(timeout=10) == -signal.SIGTERM
    finally:
        stray.kill()
        root.kill()


@pytest.mark.timeout(120)
def test_sigkill_of_the_launcher_leaves_no_torchrun_or_rank(make_spec, tmp_path):
    # The launcher of a real trial (torchrun, 2 Megatron ranks, one hanging) is SIGKILLed, as when the
    # search driver and its Ray worker die: nothing is left to run kill_tree, yet nothing survives.
    spec = make_spec(num_gpus=2, fault="hang", fault_rank=1, time_limit_s=300)
    spec_path, out = tmp_path / "spec.json", tmp_path / "hang.json"
    spec_path.write_text(spec.to_json())
    launcher = subprocess.Popen([sys.executable, "-m", "trial_runner.launch", "--spec", str(spec_path), "--nproc",
                                 "2", "--out", str(out)], cwd=_REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    log = tmp_path / "hang.json.logs" / "torchrun.log"
    trial: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while not (log.exists() and log.read_text(errors="replace").count("trial_runner.worker started") == 2):
            assert time.monotonic() < deadline and launcher.poll() is None, "the ranks did not start"
            time.sleep(0.2)
        trial = procs.descendants(launcher.pid)
        assert len(trial) >= 3  # torchrun and its two ranks
        launcher.kill()
        launcher.wait()
        assert _wait_gone(trial, 30) == [], "a torchrun or rank process outlived its launcher"
    finally:
        launcher.kill()
        for pid in trial:
            if procs.is_alive(pid):
                os.kill(pid, signal.SIGKILL)
