"""`autotune estimate` and the memory part of `autotune explain`."""

from __future__ import annotations

import json

from autotune.cli import main


def test_estimate_json_has_stages_and_peak(capsys):
    assert main(["estimate", "--model", "llama3-70b", "--gpus", "64", "--tp", "4", "--pp", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in out["stages"]] == [0, 1, 2, 3]
    keys = {"stage", "num_parameters", "weights_gib", "gradients_gib", "optimizer_gib", "activations_gib",
            "overhead_gib", "total_gib"}
    assert all(set(s) >= keys for s in out["stages"])
    assert out["peak_memory_gib"] == max(s["total_gib"] for s in out["stages"])


def test_estimate_table(capsys):
    assert main(["estimate", "--model", "qwen3-30b-a3b", "--gpus", "16", "--ep", "16", "--recompute", "full"]) == 0
    assert "activations" in capsys.readouterr().out


def test_estimate_rejects_invalid_config(capsys):
    assert main(["estimate", "--model", "llama3-70b", "--gpus", "64", "--tp", "3"]) == 2
    assert "attention_heads_tp" in capsys.readouterr().err


def test_explain_lists_memory_fixes_in_order(capsys):
    args = ["explain", "--model", "llama3-70b", "--gpus", "64", "--tp", "4", "--pp", "4", "--mbs", "2",
            "--no-distributed-optimizer", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert not out["feasible"]
    assert [r["name"] for r in out["rules"] if not r["passed"]] == ["memory"]
    assert out["memory"]["peak_memory_gib"] > 72
    changes = [f["change"] for f in out["memory_fixes"]]
    assert changes and changes == sorted(changes, key=lambda c: ["use", "--recompute", "--tp", "--pp", "--ep",
                                                                   "--mbs"].index(c.split(" ")[0]))
    assert all(f["peak_memory_gib"] <= 72 for f in out["memory_fixes"])
