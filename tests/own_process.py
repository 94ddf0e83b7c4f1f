"""Run a test in a pytest process of its own, for tests that start Ray in the driver process.

Ray's C++ client ends its whole process with exit code 1 and no Python traceback when it gives up on its GCS
or raylet; `ray.cluster_utils.Cluster` installs SIGTERM and atexit hooks in the process that builds it; and
Ray sessions started and shut down one after another in one process are not safe (ray-project/ray#31145:
segfaults when background threads outlive a session). Run in the test session itself, one such event ended
the whole session: a node-loss test cut the CI output off mid-file (exit 1), and a CI run ended with a
segmentation fault at interpreter exit after every test had passed. In a child process it fails that test
alone, with the evidence.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IN_CHILD = "AUTOTUNE_TEST_IN_OWN_PROCESS"


def in_own_process(test):
    """Run the test body in a child pytest process (why: the module docstring); here, only check that the
    child passed, and give the child's output and its Ray driver log's warnings and errors as evidence when
    it did not. A child that dies, before its pytest summary or after a passing one, is run once more and the
    death reported as a warning if the retry passes; a failed assertion fails at once. Fixtures that start
    Ray must start nothing in the parent (see test_search_multinode's).
    """

    @functools.wraps(test)
    def run(*args, **kwargs):
        if os.environ.get(IN_CHILD):
            return test(*args, **kwargs)
        node = f"{Path(inspect.getfile(test)).resolve().relative_to(REPO)}::{test.__name__}"
        crashes = []
        for attempt in (1, 2):
            code, out, ray_log = _run_child(node, kwargs["tmp_path"] / f"child{attempt}")
            if code == 0:
                break
            if _FAILED.search(out):  # the child's pytest reported a failure of the test itself: never retried
                pytest.fail(f"{node} failed in its own process (exit {code}):\n{out[-6000:]}{ray_log}", pytrace=False)
            # The child's process died: before its pytest summary (as when Ray's C++ side ends it), or after
            # a passing one (a crash at interpreter exit). Retried once, and reported as a warning when the
            # retry passes, so it is never silent.
            crashes.append(f"attempt {attempt}: exit {code}\n{out[-3000:]}{ray_log}")
        else:
            pytest.fail(f"{node}: its process died twice without a clean pytest exit:\n" + "\n".join(crashes),
                        pytrace=False)
        if crashes:
            warnings.warn(f"{node}: the first attempt's process died without a clean pytest exit, the retry "
                          f"passed:\n{crashes[0]}")

    return run


def timeout(child_s: int):
    """The test's time limit in the child; the parent's covers two attempts and two pytest start-ups."""
    return pytest.mark.timeout(child_s if os.environ.get(IN_CHILD) else 2 * child_s + 60)


# A failure the child's pytest reported; a child whose summary shows only passes but whose exit code is not 0
# crashed after it.
_FAILED = re.compile(r"\b\d+ (failed|errors?)\b")


def _run_child(node: str, basetemp: Path) -> tuple[int, str, str]:
    """Run one test in a child pytest: its exit code, its output, and (when it failed) its Ray driver's
    warnings and errors."""
    started = time.time()
    # Ray's C++ client gives up on an unanswering GCS after 60 s and ends its process ("The program will
    # terminate", exit 1); three simulated nodes and four Megatron ranks on a 2-core CI machine can starve the
    # GCS (ray-project/ray#34334 saw the same on a CPU-saturated cluster), so the child's Ray waits longer.
    env = dict(os.environ, **{IN_CHILD: "1", "RAY_gcs_rpc_server_reconnect_timeout_s": "300"})
    # The child's own temporary root, inside this test's: its session then never rotates this one's away.
    child = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}",
                              node], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)  # nor a signal to its group
    try:
        out, _ = child.communicate()  # bounded by this test's timeout mark, which the child also has
    except BaseException:
        child.kill()  # its Ray processes and trials end with it (fate sharing, the trial runner's chain)
        child.wait()
        raise
    return child.returncode, out, _ray_driver_errors(child.pid, started) if child.returncode else ""


def _ray_driver_errors(pid: int, since: float) -> str:
    """Warning and error lines of the Ray driver logs that process `pid` wrote (Ray's C++ side logs there)."""
    lines = []
    for log in Path("/tmp/ray").glob(f"session_*/logs/python-core-driver-*_{pid}.log"):
        if log.stat().st_mtime >= since:
            lines += [f"{log.parent.parent.name}: {line}" for line in log.read_text(errors="replace").splitlines()
                      if "] " in line and line.split("] ", 1)[0].split()[-3:-2] in (["W"], ["E"], ["C"], ["F"])]
    return "\nRay driver log, warnings and errors:\n" + "\n".join(lines[-40:]) if lines else ""
