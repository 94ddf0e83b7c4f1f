"""kill_tree ends a process tree even when children moved to their own sessions (as torchrun's do)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from trial_runner import procs

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


def test_is_alive_false_for_unknown_pid():
    assert not procs.is_alive(2**22 + 12345)
