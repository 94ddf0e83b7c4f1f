"""Every failure class, produced for real: torchrun, Megatron Core on CPU, injected test-only faults."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from trial_runner import procs
from trial_runner.launch import run_trial
from trial_runner.spec import read_result

_REPO = Path(__file__).resolve().parents[2]

# Big enough that Adam on it needs several GiB (~450M parameters, fp32), small enough to fail fast.
_BIG_DENSE = dict(num_layers=16, hidden_size=1536, ffn_hidden_size=4096, kv_channels=192)


def _processes_mentioning(text: str) -> list[int]:
    """Live pids whose command line contains `text` (here: the trial's unique output path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and procs.is_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.mark.timeout(120)
def test_crash_on_one_rank_reports_that_rank_and_its_log(make_spec, tmp_path):
    spec = make_spec(num_gpus=2, fault="crash", fault_rank=1)
    result = run_trial(spec, 2, tmp_path / "crash.json")
    assert result.status == "crashed"
    assert result.failing_rank == 1
    assert "injected crash on rank 1" in result.error
    assert "injected crash on rank 1" in result.log_tail and "Traceback" in result.log_tail
    assert not _processes_mentioning(str(tmp_path))


@pytest.mark.timeout(120)
def test_hang_is_killed_at_the_time_limit_with_nothing_left_behind(make_spec, tmp_path):
    limit = 25.0  # the same trial without the hang finishes in ~10 s on 2 CPU cores
    spec = make_spec(num_gpus=2, fault="hang", fault_rank=1, time_limit_s=limit)
    t0 = time.monotonic()
    result = run_trial(spec, 2, tmp_path / "hang.json", grace_s=3)
    elapsed = time.monotonic() - t0
    assert result.status == "timeout"
    assert f"time_limit_s={limit}" in result.error
    # The evidence: rank 1's stack, dumped as it was ended, shows it stuck in the injected hang.
    rank1 = result.log_tail.split("--- local rank 1: where it was when ended ---\n", 1)[-1]
    assert "--- local rank 1" in result.log_tail and "in train_step" in rank1, result.log_tail
    assert limit <= elapsed < limit + 2 * 3 + 5  # limit, at most SIGTERM + SIGKILL grace, then reporting
    assert not _processes_mentioning(str(tmp_path)), "a torchrun or worker process survived the kill"


@pytest.mark.timeout(120)
def test_nan_loss_is_reported_with_the_losses_so_far(make_spec, tmp_path):
    # Two ranks: the nan_loss report is gathered from every rank, so this also checks they all get there.
    result = run_trial(make_spec(num_gpus=2, fault="nan"), 2, tmp_path / "nan.json")
    assert result.status == "nan_loss"
    assert "loss became nan at step 2" in result.error
    assert len(result.losses) == 2 and result.losses[0] == result.losses[0]  # step 1 finite, step 2 NaN


@pytest.mark.timeout(120)
def test_invalid_config_keeps_megatrons_message_via_the_cli(make_spec, tmp_path):
    # Megatron's TransformerConfig refuses uneven-stage sizes combined with accounting for the
    # embedding (transformer_config.py); our own constraints module is not consulted here.
    spec = make_spec(num_gpus=1, num_layers_in_first_pipeline_stage=2, account_for_embedding_in_pipeline_split=True)
    spec_path, out = tmp_path / "spec.json", tmp_path / "invalid.json"
    spec_path.write_text(spec.to_json())
    cli = subprocess.run([sys.executable, "-m", "trial_runner.launch", "--spec", str(spec_path), "--nproc", "1",
                          "--out", str(out)], capture_output=True, text=True, cwd=_REPO, timeout=100)
    assert cli.returncode == 1 and cli.stdout.startswith("invalid_config: "), cli.stdout + cli.stderr
    result = read_result(out)
    assert result.status == "invalid_config" and result.failing_rank == 0
    assert "num_layers_in_first_pipeline_stage and num_layers_in_last_pipeline_stage cannot be" in result.error


@pytest.mark.timeout(120)
def test_memory_cap_gives_oom(make_spec, tmp_path):
    # ~1 GiB of address space is taken by torch + Megatron + gloo before the cap applies; the
    # big model's weights alone (~1.8 GiB) then cannot fit under 1.6 GiB.
    spec = make_spec(num_gpus=1, model_updates=_BIG_DENSE, memory_cap_gib=1.6)
    result = run_trial(spec, 1, tmp_path / "oom.json")
    assert result.status == "oom", f"{result.status}: {result.error}\n{result.log_tail}"
    assert "allocate" in result.error or "memory" in result.error.lower()


@pytest.mark.timeout(120)
def test_a_cap_too_low_for_the_ranks_threads_gives_oom(make_spec, tmp_path):
    # ~1 GiB is mapped per rank before the cap applies; under 1.2 GiB the ranks cannot even start the
    # threads of their gloo process groups (EAGAIN), or abort in C++ without a Python error, depending on
    # where the address space runs out. Either way it is memory, not the config nor a crash.
    spec = make_spec("tiny-moe", num_gpus=2, memory_cap_gib=1.2)
    result = run_trial(spec, 2, tmp_path / "threads.json")
    assert result.status == "oom", f"{result.status}: {result.error}\n{result.log_tail}"
    assert "memory_cap_gib=1.2" in result.error and "refused the config" not in result.error, result.error


@pytest.mark.timeout(120)
def test_mla_on_the_local_spec_is_unsupported(make_spec, tmp_path):
    mla = dict(name="tiny-mla", num_query_groups=8,
               mla=dict(q_lora_rank=None, kv_lora_rank=32, qk_head_dim=8, qk_pos_emb_head_dim=8, v_head_dim=8))
    result = run_trial(make_spec(num_gpus=1, model_updates=mla), 1, tmp_path / "mla.json")
    assert result.status == "unsupported", f"{result.status}: {result.error}"
    assert "multi-latent attention" in result.error and "transformer_engine" in result.error


@pytest.mark.timeout(60)
def test_launch_failed_when_the_interpreter_cannot_start(make_spec, tmp_path):
    result = run_trial(make_spec(num_gpus=1), 1, tmp_path / "nopython.json", python="/nonexistent/python")
    assert result.status == "launch_failed" and "could not start torchrun" in result.error


@pytest.mark.timeout(60)
def test_launch_failed_when_no_worker_starts(make_spec, tmp_path):
    # The system python has no torch: torchrun itself cannot import, so no worker ever starts.
    result = run_trial(make_spec(num_gpus=1), 1, tmp_path / "notorch.json", python="/usr/bin/python3")
    assert result.status == "launch_failed", result.error
    assert "torch" in result.log_tail
