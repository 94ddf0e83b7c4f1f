"""Find and end a process tree through /proc (Linux), so a trial never leaves processes behind.

Killing torchrun's process group is not enough: torchrun starts each worker with
start_new_session=True (torch/distributed/elastic/multiprocessing/subprocess_handler), so the
workers live in their own groups. We snapshot the whole tree *before* signalling (once torchrun
dies its workers are re-parented and can no longer be found from it) and signal every group. A
process that left the tree anyway (its parent died first) is still found by the trial's token, an
environment variable every process of the trial inherits.

When the launcher itself is killed (SIGKILL of the search driver ends its Ray worker), nothing is
left to run kill_tree. Then the chain is: torchrun dies by PR_SET_PDEATHSIG with the launcher, each
rank by PR_SET_PDEATHSIG with torchrun, and each rank also watches the launcher's pid
(`watch_launcher`), which covers the windows PDEATHSIG misses (a parent that died before the child
called prctl, a rank's own children).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; the fields after the last ')' do not.
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2])


def is_alive(pid: int) -> bool:
    """Running or sleeping; a zombie has already exited and holds no resources but its pid."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def descendants(root: int) -> list[int]:
    """All live descendants of `root` (not including it)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                children.setdefault(st[1], []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_all(pids: list[int] | set[int], sig: signal.Signals, skip_group: int | None = None) -> None:
    """Signal each process's group (except `skip_group`), in the order given, then each process that no
    signalled group holds: one signal per process. A rank's stack dump on SIGTERM (faulthandler with
    chain=True, which installs it with SA_NODEFER) is cut short when a second SIGTERM arrives during it:
    the nested handler skips the dump (faulthandler's reentrancy guard) and terminates the process."""
    stats = {pid: _stat(pid) for pid in pids}
    groups = list(dict.fromkeys(st[2] for st in stats.values() if st is not None and st[2] != skip_group))
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pids:
        st = stats[pid]
        if st is not None and st[2] in groups:
            continue
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def carrying(token: str) -> list[int]:
    """Live processes (of this user: others' environ cannot be read) whose environment has
    TRIAL_TOKEN_ENV=token."""
    needle = f"{TRIAL_TOKEN_ENV}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0") and is_alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# How long kill_tree lets the ranks end (and write their stack dumps) before it signals torchrun.
RANK_DUMP_WINDOW_S = 2.0


def kill_tree(root: int, grace_s: float = 5.0, token: str | None = None) -> list[int]:
    """SIGTERM every descendant of `root` (and its process group) and every process carrying `token`,
    give them up to RANK_DUMP_WINDOW_S to end, SIGTERM `root`, then SIGKILL what is left after `grace_s`.
    Returns every pid that was part of the tree, for callers that want to verify."""
    # The ranks first, one SIGTERM each, and time to finish before torchrun is signalled: a rank dumps its
    # stacks on SIGTERM (trial_runner.worker), and a second SIGTERM during the dump (its group's and its
    # own, or torchrun forwarding one as it shuts down) or torchrun's exit (PR_SET_PDEATHSIG's SIGKILL)
    # cuts it short. Seen on the 2-core CI machine: a hung rank's stack cut off after three frames, so the
    # timeout report lacked the one stack that showed the hang.
    tree = [*reversed(descendants(root)), root]
    order = [*tree, *(pid for pid in (carrying(token) if token else ()) if pid not in tree)]
    known = set(order)
    root_stat = _stat(root)
    below = [pid for pid in order if pid != root]
    _signal_all(below, signal.SIGTERM, skip_group=root_stat[2] if root_stat else None)
    deadline = time.monotonic() + min(grace_s, RANK_DUMP_WINDOW_S)
    while time.monotonic() < deadline and any(is_alive(pid) for pid in below):
        time.sleep(0.05)
    _signal_all([root], signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        known |= {p for pid in list(known) if is_alive(pid) for p in descendants(pid)}
        if token:
            known |= set(carrying(token))
        if not any(is_alive(pid) for pid in known):
            return sorted(known)
        time.sleep(0.1)
    _signal_all({pid for pid in known if is_alive(pid)}, signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_alive(pid) for pid in known):
        time.sleep(0.05)
    return sorted(known)


def die_with_parent(sig: int = signal.SIGKILL, expected_parent: int | None = None) -> None:
    """Ask Linux to send `sig` to this process when its parent exits (prctl PR_SET_PDEATHSIG).

    torchrun runs in its own session so the launcher can kill the whole group; but if the launcher
    itself is killed (SIGKILL of the search driver tears down its Ray worker), nothing would be left
    to enforce the time limit. With this, torchrun dies with the launcher and each rank with torchrun.
    A parent that died before prctl ran never sends the signal, so with `expected_parent` (the pid
    that forked us) we check afterwards and end at once when we were already re-parented.
    Linux sends the signal when the parent *thread* that forked us exits; the launcher forks from
    the thread that then waits for torchrun, and torchrun from its main thread, so that thread
    lives as long as the process. A no-op where prctl is unavailable.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), sig)


# Set by the launcher for torchrun and inherited by every rank: how a rank finds its launcher, and
# how the launcher finds every process of its trial.
LAUNCHER_ENV = "TRIAL_RUNNER_LAUNCHER"  # "<pid>:<start time>" of the launcher process
TRIAL_TOKEN_ENV = "TRIAL_RUNNER_TOKEN"  # unique per trial launch


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, a name no later process reuses."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2:].split()[19])  # field 22 of proc(5), counted after the comm field


def identity(pid: int) -> str:
    """'<pid>:<start ticks>' of a live process, for LAUNCHER_ENV."""
    return f"{pid}:{_start_ticks(pid)}"


def same_process_alive(ident: str) -> bool:
    pid, _, ticks = ident.partition(":")
    return is_alive(int(pid)) and str(_start_ticks(int(pid))) == ticks


def _end_own_group() -> None:
    # torchrun starts each rank as the leader of its own group, so the group is this rank and
    # whatever it started; anywhere else (a rank run by hand) only this process is ended.
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def watch_launcher(interval_s: float = 1.0) -> threading.Thread | None:
    """In a rank: end this rank (and its process group) as soon as the launcher named by
    LAUNCHER_ENV is gone, checked now and then every `interval_s` from a daemon thread.

    Without it, a rank whose torchrun died before the rank set PDEATHSIG (it is set only once the
    rank's Python is up) would run on with no one to enforce the time limit. Returns the thread,
    or None when no launcher is named (a rank started by hand).
    """
    ident = os.environ.get(LAUNCHER_ENV)
    if not ident:
        return None
    if not same_process_alive(ident):
        _end_own_group()

    def watch() -> None:
        while same_process_alive(ident):
            time.sleep(interval_s)
        _end_own_group()

    thread = threading.Thread(target=watch, name="launcher-watchdog", daemon=True)
    thread.start()
    return thread
