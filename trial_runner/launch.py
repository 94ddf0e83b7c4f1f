"""Launch one trial under torchrun, enforce its time limit, and always produce a TrialResult.

    python -m trial_runner.launch --spec spec.json --nproc 2 --out result.json
    python -m trial_runner.launch --spec spec.json --nproc 8 --out result.json \\
        --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500

torchrun runs in its own session; on the time limit the whole tree is ended (SIGTERM, then
SIGKILL), and nothing of the trial outlives the launcher either (see trial_runner.procs). Per-rank logs go to `<out>.logs/`. If rank 0 wrote no result, the launcher writes one
from the evidence: timeout, the first failing rank's own report and log tail, or launch_failed.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

from trial_runner import procs
from trial_runner.spec import PhaseTimings, TrialResult, TrialSpec, read_result
from trial_runner.worker import memory_symptom, peer_lost

_REPO_ROOT = Path(__file__).resolve().parent.parent
_WORKER_STARTED_MARKER = "trial_runner.worker started"  # printed by trial_runner.worker.main
_LOG_TAIL_LINES = 60
_LOG_TAIL_CHARS = 6000


def torchrun_argv(spec_path: Path, out_path: Path, log_dir: Path, nproc: int, *, nnodes: int = 1,
                  node_rank: int = 0, master_addr: str | None = None, master_port: int | None = None,
                  python: str = sys.executable) -> list[str]:
    """The torchrun command line, as an argv list (never a shell string)."""
    argv = [python, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes == 1 and master_addr is None:
        argv.append("--standalone")
    else:
        if master_addr is None or master_port is None:
            raise ValueError(
                f"multi-node launch (nnodes={nnodes}) needs master_addr and master_port, "
                f"got master_addr={master_addr!r}, master_port={master_port!r}"
            )
        argv += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master_addr}",
                 f"--master-port={master_port}"]
    # --redirects 3: each rank's stdout/stderr go to <log_dir>/<run>/attempt_0/<rank>/; --tee 3
    # also copies them, rank-prefixed, into torchrun's own output (torchrun.log).
    argv += [f"--log-dir={log_dir}", "--redirects=3", "--tee=3", "--max-restarts=0",
             "-m", "trial_runner.worker", "--spec", str(spec_path), "--out", str(out_path)]
    return argv


def _rank_log(log_dir: Path, local_rank: int, name: str) -> Path | None:
    found = sorted(log_dir.glob(f"*/attempt_*/{local_rank}/{name}"))
    return found[-1] if found else None


def _tail(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    lines = path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines)[-_LOG_TAIL_CHARS:]


def _rank_log_tail(log_dir: Path, local_rank: int) -> str:
    err, out = _tail(_rank_log(log_dir, local_rank, "stderr.log")), _tail(_rank_log(log_dir, local_rank, "stdout.log"))
    return (err + ("\n--- stdout ---\n" + out if out else "")).strip()


def _first_rank_failure(out_path: Path, num_ranks: int) -> TrialResult | None:
    """The earliest per-rank failure report (by write time): the root cause, not the fallout."""
    reports = []
    for rank in range(num_ranks):
        path = out_path.with_name(f"{out_path.name}.rank{rank}.json")
        result = read_result(path)
        if result is not None:
            reports.append((path.stat().st_mtime, rank, result))
    return min(reports, key=lambda r: (r[0], r[1]))[2] if reports else None


def _main_stack(log: str) -> str:
    """The main thread's stack that a rank's faulthandler wrote as it was ended (trial_runner.worker
    registers it for SIGTERM), most recent call first; "" when the log has none. The signal may land
    on any thread, so the main thread is the one whose stack starts at runpy's _run_module_as_main."""
    stacks = re.findall(r"^(?:Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):\n(?:  File .*\n?)+",
                        log, flags=re.M)
    main = [st.strip() for st in stacks if "_run_module_as_main" in st]
    return main[-1] if main else ""


def _started(torchrun_log: Path) -> bool:
    return torchrun_log.exists() and _WORKER_STARTED_MARKER in torchrun_log.read_text(errors="replace")


def run_trial(spec: TrialSpec, nproc: int, out_path: str | os.PathLike, *, nnodes: int = 1, node_rank: int = 0,
              master_addr: str | None = None, master_port: int | None = None, grace_s: float = 5.0,
              python: str = sys.executable) -> TrialResult:
    """Run one trial and return its result (also written atomically to `out_path`).

    `nproc` is ranks on this node; nnodes * nproc must equal spec.job.num_gpus. `python` is the
    interpreter that has torch and megatron-core. Never raises for a failed run: the failure is
    the result's status.
    """
    out_path = Path(out_path).resolve()
    if nnodes * nproc != spec.num_ranks:
        raise ValueError(
            f"nnodes * nproc must equal job.num_gpus={spec.num_ranks}, got nnodes={nnodes}, nproc={nproc}"
        )
    work = out_path.with_name(out_path.name + ".logs")
    work.mkdir(parents=True, exist_ok=True)
    for stale in [out_path, *out_path.parent.glob(f"{out_path.name}.rank*.json")]:
        stale.unlink(missing_ok=True)
    spec_path = work / "spec.json"
    spec_path.write_text(spec.to_json())
    torchrun_log = work / "torchrun.log"
    argv = torchrun_argv(spec_path, out_path, work / "ranks", nproc, nnodes=nnodes, node_rank=node_rank,
                         master_addr=master_addr, master_port=master_port, python=python)
    t0 = time.time()
    token = uuid.uuid4().hex
    env = dict(os.environ, TRIAL_RUNNER_LAUNCH_T0=repr(t0),
               PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")])),
               **{procs.LAUNCHER_ENV: procs.identity(os.getpid()), procs.TRIAL_TOKEN_ENV: token})
    base = dict(config_key=spec.job.parallel.canonical_key(), num_ranks=spec.num_ranks, backend=spec.backend)
    timed_out = False
    with open(torchrun_log, "w") as log:
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=_REPO_ROOT,
                                    start_new_session=True,
                                    preexec_fn=functools.partial(procs.die_with_parent, expected_parent=os.getpid()))
        except OSError as exc:
            result = TrialResult(status="launch_failed", error=f"could not start torchrun: {exc}", **base)
            result.write_atomic(out_path)
            return result
        try:
            proc.wait(timeout=spec.time_limit_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Also on success: a worker that outlived torchrun must not survive the trial.
            procs.kill_tree(proc.pid, grace_s=grace_s, token=token)
            proc.wait()
    total_s = time.time() - t0
    result = _compose(spec, nproc, out_path, work, torchrun_log, proc.returncode, timed_out, base)
    timings = result.timings.model_copy(update={"total_s": total_s})
    result = result.model_copy(update={"timings": timings})
    result.write_atomic(out_path)
    return result


def _compose(spec: TrialSpec, nproc: int, out_path: Path, work: Path, torchrun_log: Path, returncode: int, timed_out: bool,
             base: dict) -> TrialResult:
    if timed_out:
        stacks = [_main_stack(_tail(_rank_log(work / "ranks", r, "stderr.log"))) for r in range(nproc)]
        return TrialResult(
            status="timeout", error=f"trial exceeded time_limit_s={spec.time_limit_s}; the process tree was killed",
            log_tail="\n".join(f"--- local rank {r}: where it was when ended ---\n{st}"
                                for r, st in enumerate(stacks) if st)[:_LOG_TAIL_CHARS] or _tail(torchrun_log),
            **base,
        )
    written = read_result(out_path)
    if written is not None:
        return written
    failure = _first_rank_failure(out_path, spec.num_ranks)
    # A report that only says a peer went away is fallout: the peer that died without a report is the
    # root cause when its log shows why.
    if failure is None or peer_lost(failure.error or ""):
        silent = _silent_memory_death(spec, nproc, work, base)
        if silent is not None:
            return silent
    if failure is not None:
        rank = failure.failing_rank or 0
        tail = _rank_log_tail(work / "ranks", rank % nproc) or _tail(torchrun_log)  # logs are by local rank
        return failure.model_copy(update={"log_tail": tail})
    if not _started(torchrun_log):
        return TrialResult(
            status="launch_failed", error=f"torchrun exited with {returncode} before any worker started",
            log_tail=_tail(torchrun_log), **base,
        )
    return TrialResult(
        status="crashed", error=f"torchrun exited with {returncode} and no rank reported a result",
        log_tail=_tail(torchrun_log), timings=PhaseTimings(), **base,
    )


def _silent_memory_death(spec: TrialSpec, nproc: int, work: Path, base: dict) -> TrialResult | None:
    """A rank that died in C++ (std::terminate, libgomp's exit) never reaches its Python handler, so it
    writes no report; under a memory cap its log still shows that memory ran out."""
    for local_rank in range(nproc):
        tail = _rank_log_tail(work / "ranks", local_rank)
        symptom = memory_symptom(tail, memory_capped=spec.memory_cap_gib is not None)
        if symptom:
            cap = f" (memory_cap_gib={spec.memory_cap_gib})" if spec.memory_cap_gib is not None else ""
            return TrialResult(
                status="oom", error=f"local rank {local_rank} died without a report{cap}: {symptom}",
                failing_rank=local_rank if spec.num_ranks == nproc else None, log_tail=tail, **base,
            )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trial_runner.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, type=Path, help="TrialSpec JSON")
    parser.add_argument("--nproc", required=True, type=int, help="ranks on this node")
    parser.add_argument("--out", required=True, type=Path, help="where to write the TrialResult JSON")
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--master-addr", default=None)
    parser.add_argument("--master-port", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        spec = TrialSpec.from_json(args.spec.read_text())
        result = run_trial(spec, args.nproc, args.out, nnodes=args.nnodes, node_rank=args.node_rank,
                           master_addr=args.master_addr, master_port=args.master_port)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    summary = f"{result.status}: {result.config_key}"
    if result.ok:
        summary += (f" {result.tokens_per_s_per_gpu:.1f} tokens/s/gpu, step {result.step_time_s:.3f}s, "
                    f"peak {result.peak_memory_gib:.2f} GiB")
    else:
        summary += f" ({result.error})"
    print(summary)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
