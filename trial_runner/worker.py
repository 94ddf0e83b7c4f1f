"""One rank of a trial, run by torchrun: build, warm up, time, report.

`python -m trial_runner.worker --spec spec.json --out result.json` (torchrun sets RANK etc.).
Rank 0 writes the result JSON atomically when the run completes or the loss goes non-finite
(both are known to every rank). A rank that fails on its own writes `<out>.rank<N>.json` with its
status and error, so the launcher can report the *first* failing rank, not the collateral ones.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

from autotune.config import ParallelConfig
from autotune.pipeline import megatron_virtual_stages
from autotune.run_settings import RunSettings, run_settings_for
from trial_runner import procs
from trial_runner.procs import die_with_parent
from trial_runner.spec import PhaseTimings, TrialResult, TrialSpec, Versions

WORKER_STARTED_MARKER = "trial_runner.worker started"
_GIB = 1024**3


class NonFiniteLossError(RuntimeError):
    pass


class InvalidConfigError(RuntimeError):
    """Megatron refused the config while building it (its own message is kept)."""


def rank_failure_path(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.name}.rank{rank}.json")


def _versions() -> Versions:
    import torch

    try:
        from megatron.core import __version__ as mcore
    except ImportError:
        mcore = None
    try:
        import transformer_engine

        te = transformer_engine.__version__
    except ImportError:
        te = None
    return Versions(torch=torch.__version__, megatron_core=mcore, transformer_engine=te, cuda=torch.version.cuda)


def trial_run_settings(spec: TrialSpec) -> RunSettings:
    """What this trial runs with: the exported settings (autotune.run_settings) less what it cannot run."""
    exported = run_settings_for(spec.job)
    overlap_dp = spec.overlap_data_parallel_comm
    fp8 = spec.backend == "gpu" and exported.fp8_format is not None  # CPU trials train in fp32 (Trial.init)
    return RunSettings(
        overlap_grad_reduce=exported.overlap_grad_reduce and overlap_dp,
        overlap_param_gather=exported.overlap_param_gather and overlap_dp,
        # Off in every trial, so TP collectives are measured without it. It needs Transformer Engine
        # userbuffers set up before the model is built, with a per-GEMM overlap config (Megatron-LM
        # training/initialize.py::_initialize_tp_communicators, te.module.base.initialize_ub), which
        # the runner does not do; CPU trials have no Transformer Engine at all.
        tp_comm_overlap=False,
        fp8_format=exported.fp8_format if fp8 else None,
        fp8_recipe=exported.fp8_recipe if fp8 else None,
        fp8_param_gather=exported.fp8_param_gather and fp8,
    )


# Text of an exhausted memory, whatever the cap: where each comes from.
_OOM_TEXT = (
    "can't allocate memory",  # c10's DefaultCPUAllocator (c10/core/impl/alloc_cpu.cpp), a RuntimeError
    "out of memory",  # CUDA's caching allocator; torch.OutOfMemoryError is caught by type first
    "cannot allocate memory",  # strerror(ENOMEM): mmap, fork, an OSError of errno 12
    "std::bad_alloc",  # C++ new, when it reaches the log rather than pybind11's MemoryError
)
# Under an RLIMIT_AS cap a new thread's stack cannot be mapped, and thread creation fails with EAGAIN
# (pthread_create(3): "EAGAIN Insufficient resources to create another thread"). Without a cap EAGAIN
# means a process or thread limit, not memory, so these count only when this trial set the cap.
_CAPPED_THREAD_TEXT = (
    "resource temporarily unavailable",  # strerror(EAGAIN), e.g. std::system_error from std::thread in gloo's
    # new_group, which pybind11 turns into RuntimeError("Resource temporarily unavailable")
    "can't start new thread",  # CPython's threading.Thread.start (Modules/_threadmodule.c)
    "thread creation failed",  # libgomp's fatal "Thread creation failed: %s" (torch/lib/libgomp.so.1)
    "pthread_create failed",  # OpenBLAS's blas_thread_init (numpy's BLAS)
    "terminate called",  # std::terminate: a C++ thread pool whose thread could not start aborts the rank
)


# A rank whose peer died sees its next collective fail: gloo's "Connection closed by peer" (tcp/pair.cc,
# "typically caused by a remote worker crashing"), a reset connection, NCCL's "remote process exited".
# That is the peer's failure, never this rank's config; the launcher looks for the peer's own evidence.
_PEER_LOST_TEXT = ("connection closed by peer", "connection reset by peer", "remote worker crashing",
                   "remote process exited")


def peer_lost(text: str) -> bool:
    """Whether an error only says that another rank went away."""
    lowered = text.lower()
    return any(n in lowered for n in _PEER_LOST_TEXT)


def memory_symptom(text: str, memory_capped: bool) -> str | None:
    """The first line of `text` (an error or a log tail) that shows memory ran out, or None."""
    needles = _OOM_TEXT + (_CAPPED_THREAD_TEXT if memory_capped else ())
    for line in text.splitlines():
        if any(n in line.lower() for n in needles):
            return line.strip()
    return None


def _causes(exc: BaseException):
    """`exc` and the exceptions it was raised from or during (a short chain; guarded against cycles)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 16:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def memory_cause(exc: BaseException, memory_capped: bool = False) -> BaseException | None:
    """The innermost exception in `exc`'s chain that shows memory ran out (a wrapper repeats its
    cause's text; the cause is the evidence), or None."""
    import errno

    import torch

    found = None
    for e in _causes(exc):
        if (isinstance(e, (torch.OutOfMemoryError, MemoryError))
                or (isinstance(e, OSError) and (e.errno == errno.ENOMEM or (memory_capped and e.errno == errno.EAGAIN)))
                or memory_symptom(str(e), memory_capped)):
            found = e
    return found


def classify(exc: BaseException, memory_capped: bool = False) -> str:
    """Map an exception to a trial status. `memory_capped`: this rank runs under an RLIMIT_AS cap."""
    if isinstance(exc, NonFiniteLossError):
        return "nan_loss"
    # Before invalid_config: Megatron's refusal wraps whatever it raised, and a failed allocation or
    # thread start while building the model is memory, not the config.
    if memory_cause(exc, memory_capped) is not None:
        return "oom"
    if isinstance(exc, InvalidConfigError):
        return "invalid_config"
    from trial_runner.model_builder import UnsupportedModelError

    if isinstance(exc, UnsupportedModelError):
        return "unsupported"
    return "crashed"


def _peak_memory_gib(backend: str) -> tuple[float, float]:
    """(allocated, reserved) peak of this rank."""
    if backend == "gpu":
        import torch

        return torch.cuda.max_memory_allocated() / _GIB, torch.cuda.max_memory_reserved() / _GIB
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB  # ru_maxrss is KiB on Linux
    return rss, rss


def _apply_memory_cap(spec: TrialSpec) -> bool:
    """Cap this rank's address space when the spec asks; whether it did."""
    if spec.memory_cap_gib is None:
        return False
    cap = int(spec.memory_cap_gib * _GIB)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return True


def ddp_config_for(run: RunSettings, parallel: ParallelConfig):
    """Megatron Core's DistributedDataParallelConfig for these run settings (no process group needed)."""
    from megatron.core.distributed import DistributedDataParallelConfig

    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=run.overlap_grad_reduce,
        overlap_param_gather=run.overlap_param_gather,
        # Megatron-LM aligns param all-gathers across PP stages only under the interleaved schedule
        # (arguments.py validate_args sets align_param_gather=False without VPP).
        align_param_gather=run.overlap_param_gather and megatron_virtual_stages(parallel) is not None,
        fp8_param_gather=run.fp8_param_gather,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        # bucket_size stays None: DDP then picks Megatron-LM's default, max(40M, 1M x DP) elements.
    )


def _one_or_list(funcs: list):
    """The schedules take one callable for one model chunk and a list for interleaved chunks."""
    return funcs[0] if len(funcs) == 1 else funcs


def _install_sync_funcs(config, model: list, ddp_config) -> None:
    """The DDP hooks the pipeline schedules call, as Megatron-LM's train() sets them (core_v0.16.1
    megatron/training/training.py; align_grad_reduce is on by default there)."""
    if ddp_config.overlap_grad_reduce:
        # no_sync holds each bucket's reduce until the last micro-batch; start_grad_sync launches it.
        config.no_sync_func = _one_or_list([m.no_sync for m in model])
        config.grad_sync_func = _one_or_list([m.start_grad_sync for m in model])
    if ddp_config.overlap_param_gather and ddp_config.align_param_gather:
        config.param_sync_func = _one_or_list([m.start_param_sync for m in model])


def _param_gather_in_forward(ddp_config) -> bool:
    """Megatron-LM's should_disable_forward_pre_hook: the distributed optimizer's all-gather of the
    updated parameters runs in the next forward (a forward pre-hook), not after optimizer.step()."""
    return ddp_config.use_distributed_optimizer and ddp_config.overlap_param_gather


class Trial:
    """The state of one rank's run, phase by phase."""

    def __init__(self, spec: TrialSpec, out: Path, rank: int, world: int):
        self.spec, self.out, self.rank, self.world = spec, out, rank, world
        self.parallel = spec.job.parallel
        self.losses: list[float] = []
        self.step = 0
        self.run_settings = trial_run_settings(spec)

    # --- init -------------------------------------------------------------------------------
    def init(self) -> None:
        import torch
        import torch.distributed as dist

        spec = self.spec
        if spec.backend == "gpu":
            # Megatron's TP comm overlap and ordered kernel launches rely on one hardware queue.
            os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            self.dtype = torch.bfloat16
        else:
            # CPU bf16 matmuls are emulated and noisy; fp32 keeps TP-vs-TP1 loss checks tight.
            self.dtype = torch.float32
        dist.init_process_group(backend="nccl" if spec.backend == "gpu" else "gloo")

        from megatron.core import parallel_state, tensor_parallel

        p = self.parallel
        try:
            parallel_state.initialize_model_parallel(
                tensor_model_parallel_size=p.tp, pipeline_model_parallel_size=p.pp,
                virtual_pipeline_model_parallel_size=megatron_virtual_stages(p),
                context_parallel_size=p.cp, expert_model_parallel_size=p.ep, expert_tensor_parallel_size=p.etp,
            )
        except (ValueError, AssertionError, RuntimeError) as exc:
            if peer_lost(str(exc)):
                raise  # a peer died while the groups were built: its failure, not a refusal of the config
            raise InvalidConfigError(f"initialize_model_parallel refused the config: {exc}") from exc
        tensor_parallel.model_parallel_cuda_manual_seed(spec.seed)
        torch.manual_seed(spec.seed)
        self._build()

    def _build(self) -> None:
        import torch
        from megatron.core import parallel_state
        from megatron.core.distributed import DistributedDataParallel
        from megatron.core.distributed.finalize_model_grads import finalize_model_grads
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        from trial_runner.model_builder import build_model_chunks, choose_layer_spec, count_local_parameters

        spec, p, run = self.spec, self.parallel, self.run_settings
        self.layer_spec = choose_layer_spec(spec.backend)
        try:
            chunks = build_model_chunks(
                spec.model, p, seq_length=spec.job.workload.seq_length, dtype=self.dtype,
                layer_spec=self.layer_spec, use_cpu_initialization=spec.backend == "cpu", run=run,
            )
        except (ValueError, AssertionError) as exc:
            raise InvalidConfigError(f"Megatron refused the config: {type(exc).__name__}: {exc}") from exc
        self.num_parameters = count_local_parameters(chunks)
        config = chunks[0].config
        ddp_config = ddp_config_for(run, p)
        self.model = [
            # Megatron-LM buckets only the first chunk's grads (megatron/training/training.py).
            DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk, disable_bucketing=i > 0)
            for i, chunk in enumerate(chunks)
        ]
        for m in self.model:
            m.broadcast_params()
        opt_config = OptimizerConfig(
            optimizer="adam", lr=spec.learning_rate, weight_decay=0.0, clip_grad=1.0,
            bf16=self.dtype == torch.bfloat16, params_dtype=self.dtype,
            use_distributed_optimizer=p.use_distributed_optimizer,
            # Megatron-LM copies these args into OptimizerConfig too (training.py get_megatron_optimizer_config).
            overlap_param_gather=run.overlap_param_gather, fp8_recipe=run.fp8_recipe,
        )
        self.optimizer = get_megatron_optimizer(opt_config, self.model)
        config.finalize_model_grads_func = finalize_model_grads
        config.grad_scale_func = self.optimizer.scale_loss
        _install_sync_funcs(config, self.model, ddp_config)
        self.config = config
        self.pp_last = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
        self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.cp_group = parallel_state.get_context_parallel_group()
        self.cp_size = parallel_state.get_context_parallel_world_size()

    # --- data -------------------------------------------------------------------------------
    def _microbatches(self) -> list[dict]:
        """A fixed set of random-token microbatches, replayed every step so the loss can fall.

        Seeded by DP rank only, so TP/PP/CP peers see the same tokens and a TP2 run sees the
        same data as a TP1 run with the same DP size.
        """
        import torch
        from megatron.core.utils import get_batch_on_this_cp_rank

        w = self.spec.job.workload
        mbs = self.parallel.micro_batch_size
        gen = torch.Generator().manual_seed(self.spec.seed * 1000 + self.dp_rank)
        batches = []
        for _ in range(self.spec.job.num_microbatches):
            seq = torch.randint(0, self.spec.model.vocab_size, (mbs, w.seq_length + 1), generator=gen)
            batch = {
                "tokens": seq[:, :-1].contiguous(),
                "labels": seq[:, 1:].contiguous(),
                "loss_mask": torch.ones(mbs, w.seq_length),
                "position_ids": torch.arange(w.seq_length).unsqueeze(0).expand(mbs, -1).contiguous(),
            }
            batch = get_batch_on_this_cp_rank(batch)
            if self.spec.backend == "gpu":
                batch = {k: v.cuda(non_blocking=True) for k, v in batch.items()}
            batches.append(batch)
        return batches

    def _forward_step(self, data_iterator, model):
        import torch

        batch = next(data_iterator)
        output = model(batch["tokens"], batch["position_ids"], attention_mask=None, labels=batch["labels"])

        def loss_func(output_tensor):
            mask = batch["loss_mask"].view(-1).float()
            loss_sum = torch.sum(output_tensor.view(-1).float() * mask)
            if self.spec.fault == "nan" and self.step >= 1:
                loss_sum = loss_sum * float("nan")  # test-only fault injection
            num_tokens = mask.sum().to(torch.int)
            # (sum, tokens, report): the schedule divides by the tokens summed over DP x CP.
            return loss_sum, num_tokens, {"lm loss": torch.stack([loss_sum.detach(), num_tokens.float()])}

        return output, loss_func

    # --- steps ------------------------------------------------------------------------------
    def train_step(self, batches: list[dict]) -> float:
        import torch
        import torch.distributed as dist
        from megatron.core.pipeline_parallel import get_forward_backward_func

        p, w = self.parallel, self.spec.job.workload
        if self.spec.fault == "crash" and self.rank == self.spec.fault_rank and self.step == 1:
            raise RuntimeError(f"injected crash on rank {self.rank} (test-only fault)")
        if self.spec.fault == "hang" and self.rank == self.spec.fault_rank and self.step == 1:
            while True:  # test-only fault: the launcher's time limit must end this
                time.sleep(1)
        for m in self.model:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        vpp = megatron_virtual_stages(p)
        iterators = [iter(batches) for _ in self.model] if vpp else iter(batches)
        reports = get_forward_backward_func()(
            forward_step_func=self._forward_step,
            data_iterator=iterators,
            model=self.model if vpp else self.model[0],
            num_microbatches=self.spec.job.num_microbatches,
            seq_length=w.seq_length // p.cp,
            micro_batch_size=p.micro_batch_size,
            decoder_seq_length=w.seq_length // p.cp,
            forward_only=False,
        )
        self.optimizer.step()
        # Global mean loss over every token of the step: count each (DP, CP) shard once.
        device = "cuda" if self.spec.backend == "gpu" else "cpu"
        total = torch.zeros(2, dtype=torch.float64, device=device)
        if self.pp_last and self.tp_rank == 0:
            for r in reports:
                total += r["lm loss"].to(device=device, dtype=torch.float64)
        dist.all_reduce(total)
        self.step += 1
        loss = (total[0] / total[1]).item()
        self.losses.append(loss)
        if not torch.isfinite(torch.tensor(loss)):
            raise NonFiniteLossError(f"loss became {loss} at step {self.step}")
        return loss

    def _first_step(self, batches: list[dict]) -> None:
        """Megatron checks some knob combinations only on the first forward (e.g. MoE + TP
        without SP in transformer_block.py); a ValueError raised there is a config refusal.

        With the param all-gather in the forward, the first step runs without it, as Megatron-LM's
        train() does so that a bad init does not spread through the first all-gather: the parameters
        are whole after init, and the hooks come on once a step has updated them (core_v0.16.1
        training.py, disable_forward_pre_hook(param_sync=False) / enable_forward_pre_hook)."""
        import traceback as tb

        gather_in_forward = _param_gather_in_forward(self.model[0].ddp_config)
        if gather_in_forward:
            for m in self.model:
                m.disable_forward_pre_hook(param_sync=False)
            param_sync_func, self.config.param_sync_func = self.config.param_sync_func, None
        try:
            self.train_step(batches)
        except ValueError as exc:
            frames = tb.extract_tb(exc.__traceback__)
            if frames and "/megatron/" in frames[-1].filename:
                raise InvalidConfigError(f"Megatron refused the config: ValueError: {exc}") from exc
            raise
        if gather_in_forward:
            for m in self.model:
                m.enable_forward_pre_hook()
            self.config.param_sync_func = param_sync_func

    def run(self, t_start: float) -> TrialResult:
        import torch
        import torch.distributed as dist

        sync = torch.cuda.synchronize if self.spec.backend == "gpu" else (lambda: None)
        self.init()
        batches = self._microbatches()
        dist.barrier()
        t_warm0 = time.time()
        self.init_s = t_warm0 - t_start
        self._first_step(batches)
        for _ in range(self.spec.warmup_iters - 1):
            self.train_step(batches)
        sync()
        dist.barrier()
        t_meas0 = time.time()
        step_times = []
        for _ in range(self.spec.measured_iters):
            t0 = time.perf_counter()
            self.train_step(batches)
            sync()
            step_times.append(time.perf_counter() - t0)
        dist.barrier()
        t_end = time.time()
        return self.report("completed", step_times, warmup_s=t_meas0 - t_warm0, measured_s=t_end - t_meas0)

    def report(self, status: str, step_times: list[float], warmup_s: float | None, measured_s: float | None,
                error: str | None = None) -> TrialResult:
        """This run's TrialResult. Collective: every rank must call it (it gathers per-rank numbers)."""
        import statistics

        import torch.distributed as dist

        alloc, reserved = _peak_memory_gib(self.spec.backend)
        rows: list = [None] * self.world
        dist.all_gather_object(rows, (alloc, reserved, getattr(self, "num_parameters", 0)))
        w = self.spec.job.workload
        tokens_per_s = None
        median = None
        if step_times:
            median = statistics.median(step_times)
            tokens_per_s = w.global_batch_size * w.seq_length / median / self.world
        return TrialResult(
            status=status, config_key=self.parallel.canonical_key(), num_ranks=self.world,
            backend=self.spec.backend, tokens_per_s_per_gpu=tokens_per_s, step_time_s=median,
            step_time_min_s=min(step_times) if step_times else None,
            step_time_max_s=max(step_times) if step_times else None,
            peak_memory_gib=max(r[1] for r in rows),
            peak_memory_allocated_gib_per_rank=[r[0] for r in rows],
            peak_memory_reserved_gib_per_rank=[r[1] for r in rows],
            num_parameters_per_rank=[r[2] for r in rows], losses=self.losses,
            timings=PhaseTimings(init_s=self.init_s, warmup_s=warmup_s, measured_s=measured_s,
                                 launch_s=_launch_s()),
            versions=_versions(), layer_spec=self.layer_spec, dtype=str(self.dtype).removeprefix("torch."),
            run_settings=self.run_settings, error=error,
        )


def _import_heavy() -> None:
    import megatron.core.distributed  # noqa: F401
    import megatron.core.models.gpt  # noqa: F401
    import megatron.core.optimizer  # noqa: F401
    import megatron.core.pipeline_parallel  # noqa: F401
    import torch  # noqa: F401


def _launch_s() -> float | None:
    t0 = os.environ.get("TRIAL_RUNNER_LAUNCH_T0")
    started = os.environ.get("TRIAL_RUNNER_WORKER_T0")
    return float(started) - float(t0) if t0 and started else None


def main(argv: list[str] | None = None) -> int:
    die_with_parent()  # a rank never outlives its torchrun
    procs.watch_launcher()  # nor its launcher, even when torchrun died before the line above ran
    # Ended at the time limit (SIGTERM from the launcher or torchrun), a rank first writes every
    # thread's stack to its log: the evidence of where a hung trial hung.
    faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)
    t_start = time.time()
    os.environ["TRIAL_RUNNER_WORKER_T0"] = repr(t_start)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    print(f"{WORKER_STARTED_MARKER} rank={rank} world={world} t={t_start:.3f}", flush=True)
    spec = TrialSpec.from_json(args.spec.read_text())
    trial = Trial(spec, args.out, rank, world)
    capped = False
    try:
        _import_heavy()  # before the memory cap: it limits training, not imports
        if spec.backend == "cpu":
            from trial_runner import cpu_compat

            mode = cpu_compat.enable()
            mode.__enter__()
        capped = _apply_memory_cap(spec)
        result = trial.run(t_start)
    except NonFiniteLossError as exc:
        # Every rank sees the all-reduced loss, so all reach here together and rank 0 reports.
        failed = trial.report("nan_loss", [], None, None, error=str(exc))
        if rank == 0:
            failed.write_atomic(args.out)
        print(f"rank {rank}: {exc}", file=sys.stderr, flush=True)
        return 1
    except BaseException as exc:  # noqa: BLE001 - every failure must become a status, then re-exit
        status = classify(exc, memory_capped=capped)
        print(f"rank {rank} failed ({status}):\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        shown = memory_cause(exc, capped) if status == "oom" else exc  # not the config error wrapped around it
        cap = f" (memory_cap_gib={spec.memory_cap_gib})" if status == "oom" and capped else ""
        _write_rank_failure(args.out, rank, spec, status, f"{type(shown).__name__}: {shown}{cap}")
        return 1
    if rank == 0:
        result.write_atomic(args.out)
    print(f"rank {rank}: done, losses {[round(x, 4) for x in trial.losses]}", flush=True)
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


def _write_rank_failure(out: Path, rank: int, spec: TrialSpec, status: str, error: str) -> None:
    """Best effort: a failure report from this rank alone, time-stamped by its mtime."""
    try:
        TrialResult(
            status=status, config_key=spec.job.parallel.canonical_key(), num_ranks=spec.num_ranks,
            backend=spec.backend, error=error, failing_rank=rank,
        ).write_atomic(rank_failure_path(out, rank))
    except Exception:  # noqa: BLE001 - the launcher falls back to the logs
        pass


if __name__ == "__main__":
    sys.exit(main())
