"""`autotune search` and `autotune export` through the CLI, in process (the analytic path needs no GPU)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from autotune.cli import main
from tests.own_process import in_own_process, timeout

QWEN = ["search", "--model", "qwen3-235b", "--gpus", "256"]


def _run(capsys, args):
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_analytic_search_writes_a_predicted_best_yaml_and_resumes(capsys, tmp_path):
    rc, out, err = _run(capsys, QWEN + ["--out", str(tmp_path)])
    assert rc == 0, err
    assert "candidates" in out and "world_size_expert" in out  # pruning by rule
    assert "real trials need 256 GPUs" in out and "--address" in out  # how to measure for real
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("qwen3-235b-256xh100-80gb-")
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best["source"] == "predicted" and best["measured"] is None
    assert best["predicted"]["tokens_per_s_per_gpu"] > 0
    assert best["model"] == "qwen3-235b" and best["cluster"]["num_gpus"] == 256
    assert "--tensor-model-parallel-size" in best["megatron_args"]

    rc, out, err = _run(capsys, QWEN + ["--out", str(tmp_path), "--json"])
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["study"] == folder.name and [p.name for p in tmp_path.iterdir()] == [folder.name]
    assert summary["backend"] == "analytic" and summary["best"]["source"] == "predicted"
    assert summary["num_feasible"] > 0 and len(summary["top_predicted"]) == 10
    assert summary["best"]["parallelism"] == best["parallelism"]


def test_export_formats(capsys, tmp_path):
    assert main(QWEN + ["--out", str(tmp_path), "--json"]) == 0
    folder = json.loads(capsys.readouterr().out)["folder"]
    rc, out, _ = _run(capsys, ["export", "--study", folder, "--format", "megatron-args"])
    assert rc == 0 and out.startswith("--tensor-model-parallel-size ") and "--global-batch-size 1024" in out
    rc, out, _ = _run(capsys, ["export", "--study", folder, "--format", "bridge"])
    assert rc == 0 and "train.global_batch_size=1024" in out.split()
    rc, out, _ = _run(capsys, ["export", "--study", folder])
    assert rc == 0 and yaml.safe_load(out)["source"] == "predicted"


def test_custom_study_name_and_sqlite_storage(capsys, tmp_path):
    args = QWEN + ["--out", str(tmp_path), "--study-name", "mine", "--storage", f"sqlite:///{tmp_path / 'o.db'}"]
    rc, _, err = _run(capsys, args)
    assert rc == 0, err
    assert (tmp_path / "mine" / "best.yaml").is_file() and (tmp_path / "o.db").is_file()


@pytest.mark.parametrize("extra,match", [
    (["--storage", "nope://x"], "cannot open Optuna storage 'nope://x'"),
    (["--time-budget", "soon"], "--time-budget takes a duration"),
    (["--trials", "-1"], "--trials must be >= 0"),
    (["--backend", "gpu"], "--backend gpu needs 256 GPUs"),
    (["--backend", "tpu"], "Invalid value for '--backend'"),
    (["--study-name", "../x"], "--study-name must be a plain folder name"),
    (["--address", "127.0.0.1:1"], "cannot reach Ray at --address 127.0.0.1:1"),
    (["--address", "nohost"], "--address must be 'auto' or HOST:PORT"),
])
def test_search_mistakes_are_one_line(capsys, tmp_path, extra, match):
    if "--backend" in extra and "gpu" in extra and shutil.which("nvidia-smi"):
        pytest.skip("this machine has GPUs")
    rc, _, err = _run(capsys, QWEN + ["--out", str(tmp_path)] + extra)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and match in err


@pytest.mark.parametrize("args,match", [
    (["search", "--model", "qwen9", "--gpus", "8"], "unknown model 'qwen9'"),
    (["search", "--model", "qwen3-235b", "--gpus", "0"], "--gpus must be a positive integer, got 0"),
    (["export", "--study", "/nonexistent/study"], "no best.yaml"),
])
def test_other_mistakes_are_one_line(capsys, tmp_path, args, match):
    rc, _, err = _run(capsys, args + (["--out", str(tmp_path)] if args[0] == "search" else []))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and match in err


def test_unwritable_out_is_one_line(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    rc, _, err = _run(capsys, QWEN + ["--out", str(tmp_path / "file" / "results")])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "is not writable" in err


def test_export_bad_format(capsys, tmp_path):
    assert main(QWEN + ["--out", str(tmp_path), "--json"]) == 0
    folder = json.loads(capsys.readouterr().out)["folder"]
    rc, _, err = _run(capsys, ["export", "--study", folder, "--format", "toml"])
    assert rc == 2 and "--format must be one of" in err


@pytest.mark.slow
@timeout(600)
@in_own_process  # it starts Ray in the driver: not in the main test session (tests/own_process.py)
def test_cpu_search_runs_real_trials_on_ray(capsys, tmp_path):
    """Two real Megatron Core trials of tiny-moe on 4 CPU ranks, scheduled by a local Ray."""
    args = ["search", "--model", "tiny-moe", "--gpus", "4", "--backend", "cpu", "--trials", "2", "--seq-len", "64",
            "--global-batch-size", "8", "--trial-timeout", "240", "--out", str(tmp_path), "--json"]
    rc, out, err = _run(capsys, args)
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["backend"] == "cpu" and summary["study"].endswith("-cpu")
    trials = summary["trials"]
    assert len(trials) == 2 and len({t["config_key"] for t in trials}) == 2
    # The first trial is the predicted best; later ones explore other meshes, which may fail on CPU:
    # a failure must be recorded with its status and reason, never crash the search.
    assert trials[0]["status"] == "completed" and trials[0]["measured"]["tokens_per_s_per_gpu"] > 0, trials[0]
    for t in trials[1:]:
        assert t["status"] == "completed" or (t["measured"] is None and t["reason"]), t
    assert summary["best"]["source"] == "measured"
    folder = tmp_path / summary["study"]
    assert len((folder / "trials.jsonl").read_text().splitlines()) == 2
    assert (folder / "trials" / "0000" / "result.json").is_file()
