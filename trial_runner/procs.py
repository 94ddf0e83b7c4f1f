"""Find and end a process tree through /proc (Linux), so a trial never leaves processes behind.

Killing torchrun's process group is not enough: torchrun starts each worker with
start_new_session=True (torch/distributed/elastic/multiprocessing/subprocess_handler), so the
workers live in their own groups. We snapshot the whole tree *before* signalling (once torchrun
dies its workers are re-parented and can no longer be found from it) and signal every group.
"""

from __future__ import annotations

import os
import signal
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


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    groups = {st[2] for pid in pids if (st := _stat(pid)) is not None}
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_tree(root: int, grace_s: float = 5.0) -> list[int]:
    """SIGTERM `root` and every descendant's process group, then SIGKILL what is left after
    `grace_s`. Returns every pid that was part of the tree, for callers that want to verify."""
    known = {root, *descendants(root)}
    _signal_all(known, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        known |= {p for pid in list(known) if is_alive(pid) for p in descendants(pid)}
        if not any(is_alive(pid) for pid in known):
            return sorted(known)
        time.sleep(0.1)
    _signal_all({pid for pid in known if is_alive(pid)}, signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_alive(pid) for pid in known):
        time.sleep(0.05)
    return sorted(known)


def die_with_parent(sig: int = 9) -> None:
    """Ask Linux to send `sig` to this process when its parent exits (prctl PR_SET_PDEATHSIG).

    torchrun runs in its own session so the launcher can kill the whole group; but if the launcher
    itself is killed (SIGKILL of the search driver tears down its Ray worker), nothing would be left
    to enforce the time limit. With this, torchrun dies with the launcher and each rank with torchrun.
    A no-op where prctl is unavailable.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, sig, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
