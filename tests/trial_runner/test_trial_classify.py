"""Failure classification under a CPU memory cap (RLIMIT_AS): what memory exhaustion looks like there.

A cap limits address space, so besides failed allocations it makes thread creation fail: a new thread's
stack cannot be mapped and pthread_create returns EAGAIN. torch and Python report that as
"Resource temporarily unavailable" or "can't start new thread", never as MemoryError; these tests
produce the real errors in a real capped process and check that they are oom only under a cap.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trial_runner.worker import InvalidConfigError, classify, memory_cause, memory_symptom

_REPO = Path(__file__).resolve().parents[2]

# Caps its own address space a little above what it maps now (so the test needs no machine-specific
# number), then starts threads -- plain Python ones, or the ones gloo starts for each new process group --
# until one fails, and reports the exception and how the worker classifies it.
_CAPPED = """
import json, resource, sys, threading, time
import torch.distributed as dist
from trial_runner import worker

def mapped_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
cap = mapped_bytes() + 64 * 2**20  # 64 MiB: a few 8 MiB thread stacks
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
try:
    for _ in range(10_000):
        if sys.argv[1] == "python-thread":
            threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        else:
            dist.new_group([0], backend="gloo")
except Exception as exc:
    wrapped = worker.InvalidConfigError(f"initialize_model_parallel refused the config: {exc}")
    wrapped.__cause__ = exc  # as Trial.init wraps what Megatron raised
    print(json.dumps({"type": type(exc).__name__, "message": str(exc),
                      "capped": worker.classify(exc, memory_capped=True),
                      "uncapped": worker.classify(exc, memory_capped=False),
                      "wrapped_capped": worker.classify(wrapped, memory_capped=True)}))
else:
    print(json.dumps({"type": None}))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("starter,message", [
    ("python-thread", "can't start new thread"),  # CPython's threading (Modules/_threadmodule.c)
    ("gloo-group", "Resource temporarily unavailable"),  # std::system_error(EAGAIN) via pybind11
])
def test_thread_start_failing_under_a_memory_cap_is_oom(starter, message):
    run = subprocess.run([sys.executable, "-c", _CAPPED, starter], capture_output=True, text=True, cwd=_REPO,
                         timeout=100, env=dict(os.environ, PYTHONPATH=str(_REPO)))
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["type"] == "RuntimeError" and report["message"] == message, (report, run.stderr[-2000:])
    assert report["capped"] == "oom"
    assert report["uncapped"] == "crashed"  # without a cap, EAGAIN is a thread or process limit, not memory
    assert report["wrapped_capped"] == "oom"  # Megatron's refusal around it does not make it a config error


def _raised_from(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise outer from inner
    except BaseException as exc:
        return exc


@pytest.mark.parametrize("exc,capped,status", [
    (MemoryError(), False, "oom"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 4294967296 bytes"), False, "oom"),
    (OSError(errno.ENOMEM, "Cannot allocate memory"), False, "oom"),
    (OSError(errno.EAGAIN, "Resource temporarily unavailable"), True, "oom"),
    (OSError(errno.EAGAIN, "Resource temporarily unavailable"), False, "crashed"),
    (RuntimeError("injected crash on rank 1 (test-only fault)"), True, "crashed"),
    # A real config refusal stays one under a cap (message from Megatron's transformer_config.py).
    (InvalidConfigError("Megatron refused the config: ValueError: num_layers_in_first_pipeline_stage and "
                        "num_layers_in_last_pipeline_stage cannot be set"), True, "invalid_config"),
])
def test_classify(exc, capped, status):
    assert classify(exc, memory_capped=capped) == status


def test_classify_looks_through_the_chain_only_for_memory():
    config_error = _raised_from(InvalidConfigError("Megatron refused the config: ValueError: bad split"),
                                ValueError("bad split"))
    assert classify(config_error, memory_capped=True) == "invalid_config"
    eagain = _raised_from(InvalidConfigError("initialize_model_parallel refused the config: x"),
                          RuntimeError("Resource temporarily unavailable"))
    assert classify(eagain, memory_capped=True) == "oom"
    assert type(memory_cause(eagain, memory_capped=True)) is RuntimeError  # the evidence, not the wrapper
    assert classify(eagain, memory_capped=False) == "invalid_config"


def test_memory_symptom_in_a_log_needs_the_cap_for_thread_failures():
    log = "rank 0 warming up\nterminate called without an active exception\n"
    assert memory_symptom(log, memory_capped=True) == "terminate called without an active exception"
    assert memory_symptom(log, memory_capped=False) is None
    assert memory_symptom("libgomp: Thread creation failed: Resource temporarily unavailable", True)
    assert memory_symptom("terminate called after throwing an instance of 'std::bad_alloc'", False)


def _evidence(tmp_path: Path, spec, report_error: str) -> tuple[Path, Path]:
    """What a 2-rank trial leaves behind when local rank 0 dies in C++ without a report (its thread pool
    could not start a thread under the memory cap: std::terminate) and rank 1 reports `report_error`.
    The files are written by hand in the layout torchrun and the worker use; the real run of this case
    is test_trial_failures.py::test_a_cap_too_low_for_the_ranks_threads_gives_oom."""
    from trial_runner.spec import TrialResult

    work, out = tmp_path / "work", tmp_path / "result.json"
    log = work / "ranks" / "run_1" / "attempt_0" / "0" / "stderr.log"
    log.parent.mkdir(parents=True)
    log.write_text("terminate called after throwing an instance of 'std::system_error'\n"
                   "  what():  Resource temporarily unavailable\n")
    report = TrialResult(status="crashed", error=report_error, failing_rank=1, config_key=spec.job.parallel.canonical_key(),
                         num_ranks=2, backend="cpu")
    report.write_atomic(out.with_name(f"{out.name}.rank1.json"))
    return work, out


def test_a_peer_lost_report_yields_to_the_rank_that_died_of_memory(make_spec, tmp_path):
    from trial_runner.launch import _compose

    spec = make_spec("tiny-moe", num_gpus=2, memory_cap_gib=1.2)
    base = dict(config_key=spec.job.parallel.canonical_key(), num_ranks=2, backend="cpu")
    work, out = _evidence(tmp_path, spec, "RuntimeError: Gloo connectFullMesh failed with [pair.cc:553] "
                                          "Connection closed by peer [127.0.0.1]:3766")
    result = _compose(spec, 2, out, work, tmp_path / "torchrun.log", 1, False, base)
    assert result.status == "oom" and result.failing_rank == 0, result
    assert "memory_cap_gib=1.2" in result.error and "terminate called" in result.error
    assert "Resource temporarily unavailable" in result.log_tail


def test_a_rank_s_own_failure_report_is_kept(make_spec, tmp_path):
    from trial_runner.launch import _compose

    spec = make_spec("tiny-moe", num_gpus=2, memory_cap_gib=1.2)
    base = dict(config_key=spec.job.parallel.canonical_key(), num_ranks=2, backend="cpu")
    work, out = _evidence(tmp_path, spec, "ValueError: injected crash on rank 1")
    result = _compose(spec, 2, out, work, tmp_path / "torchrun.log", 1, False, base)
    assert result.status == "crashed" and result.failing_rank == 1 and "injected crash" in result.error


@pytest.mark.parametrize("text,lost", [
    ("Gloo connectFullMesh failed with [../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:3766", True),
    ("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection reset by peer", True),
    ("NCCL error: remote process exited or there was a network error", True),
    ("num_query_groups (3) must be a multiple of tensor_model_parallel_size (2)", False),
])
def test_peer_lost(text, lost):
    from trial_runner.worker import peer_lost

    assert peer_lost(text) is lost
