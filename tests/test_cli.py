"""The CLI: contracts of `models`, `space`, `explain`, and one clear line for every user mistake."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.cli import main
from autotune.config import Workload
from autotune.model_catalog import get_model

HF = Path(__file__).resolve().parent / "data" / "hf"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_json(capsys):
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    names = {m["name"] for m in json.loads(out)}
    assert {"qwen3-235b", "tiny-moe", "kimi-k2"} <= names


def test_models_table(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "qwen3-235b" in out and "Model catalog" in out


def test_space_json_contract(capsys):
    code, out, _ = run(capsys, "space", "--model", "tiny-moe", "--gpus", "8", "--seq-len", "128",
                       "--global-batch-size", "64", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["num_candidates"] == d["num_feasible"] + sum(d["pruned_by_rule"].values())
    assert len(d["feasible"]) == d["num_feasible"] > 0
    first = d["feasible"][0]
    assert first["data_parallel_size"] * first["tensor_model_parallel_size"] * \
        first["pipeline_model_parallel_size"] * first["context_parallel_size"] == 8
    assert "expert_data_parallel_size" in first


def test_space_table_prints_assumptions(capsys):
    code, out, _ = run(capsys, "space", "--model", "tiny-dense", "--gpus", "4", "--top", "3")
    assert code == 0
    assert "assumed:" in out and "seq_length=4096" in out and "gpu_type=h100-80gb" in out


def test_space_table_compares_to_the_best_and_states_the_model_error(capsys):
    """The predicted table gives each config's speed relative to #1, and the line under it quotes the
    leave-one-out error recorded beside the packaged constants (read here from the file itself)."""
    args = ("space", "--model", "llama3-70b", "--gpus", "64", "--seq-len", "8192", "--global-batch-size", "128",
            "--precision", "fp8")
    from autotune.cluster import ClusterSpec
    from autotune.cost_ranking import rank_space
    from autotune.space import enumerate_space
    from autotune.space_files import default_space

    model = get_model("llama3-70b")
    ranked = rank_space(enumerate_space(default_space(model), model, ClusterSpec.build(64, "h100-80gb"),
                                        Workload(seq_length=8192, global_batch_size=128, precision="fp8")))
    speeds = [ranked.predicted(int(i))["tokens_per_s_per_gpu"] for i in ranked.order[:3]]  # what the table prints
    code, out, _ = run(capsys, *args, "--top", "3")
    assert code == 0
    text = " ".join(out.split())
    assert "vs #1" in text and "+0.0%" in text
    assert f"{speeds[2] / speeds[0] - 1:+.1%}" in text
    constants_file = Path(__file__).resolve().parents[1] / "autotune" / "data" / "cost_constants.json"
    fit = json.loads(constants_file.read_text())["fit"]
    assert f"{fit['loo_mape_h100']:.1%} mean on {fit['h100_rows']} published H100 runs" in text


def test_error_line_names_the_gpu_types_the_cost_model_was_not_fitted_on(capsys):
    """H100 is fitted: no caveat. GB200 is not, but was checked out of sample: the line quotes that check's mean
    error from the fit record. B200 was neither fitted nor checked: the line says its speeds are datasheet figures."""
    constants_file = Path(__file__).resolve().parents[1] / "autotune" / "data" / "cost_constants.json"
    fit = json.loads(constants_file.read_text())["fit"]
    assert "h100-80gb" in fit["fitted_gpu_types"] and "gb200" not in fit["fitted_gpu_types"]
    texts = {}
    for gpu in ("h100-80gb", "gb200", "b200"):
        code, out, _ = run(capsys, "space", "--model", "llama3-8b", "--gpus", "8", "--gpu-type", gpu, "--top", "1")
        assert code == 0
        texts[gpu] = " ".join(out.split())
    assert "is in the fit" not in texts["h100-80gb"]
    dense, moe = fit["out_of_sample"]["gb200"]["dense"], fit["out_of_sample"]["gb200"]["moe"]
    assert ("No gb200 run is in the fit; published gb200 runs, predicted with these constants, are off on average: "
            f"{dense['rows']} dense-model runs by {dense['mape']:.1%} and {moe['rows']} MoE-model runs by "
            f"{moe['mape']:.1%}.") in texts["gb200"]
    assert "No b200 run is in the fit or checked: its speeds rest on datasheet figures" in texts["b200"]


def test_space_accepts_hf_config_path(capsys):
    code, out, _ = run(capsys, "space", "--model", str(HF / "mixtral-8x7b"), "--gpus", "64", "--json")
    assert code == 0 and json.loads(out)["num_feasible"] > 0


def test_explain_json_lists_every_rule(capsys):
    from autotune.constraints import RULES

    code, out, _ = run(capsys, "explain", "--model", "qwen3-235b", "--gpus", "256", "--tp", "2", "--pp", "8",
                       "--vpp", "4", "--ep", "32", "--global-batch-size", "8192", "--recompute", "full", "--pipeline-split",
                       "account_embedding_loss", "--json")
    assert code == 0
    d = json.loads(out)
    assert [r["name"] for r in d["rules"]] == [r.name for r in RULES]
    # 94 layers + embedding + loss = 96 slots over PP8 x VPP4: valid.
    assert d["feasible"] is True


def test_explain_shows_failures_with_fix(capsys):
    code, out, _ = run(capsys, "explain", "--model", "qwen3-235b", "--gpus", "256", "--tp", "2", "--pp", "8",
                       "--ep", "32", "--json")
    d = json.loads(out)
    assert code == 0 and d["feasible"] is False
    failed = {r["name"]: r for r in d["rules"] if not r["passed"]}
    assert "pipeline_layers" in failed
    assert "94 layers are not divisible by pipeline_model_parallel_size=8" in failed["pipeline_layers"]["message"]
    assert failed["pipeline_layers"]["fix"]


def test_explain_table(capsys):
    code, out, _ = run(capsys, "explain", "--model", "llama3-70b", "--gpus", "64", "--tp", "16")
    assert code == 0 and "tp_in_nvlink_domain" in out and "FAIL" in out and "infeasible" in out


BAD_INPUT = [
    (["space", "--model", "qwen3-253b", "--gpus", "256"], r"unknown model 'qwen3-253b'.*did you mean"),
    (["space", "--model", "qwen3-235b", "--gpus", "0"], r"--gpus must be a positive integer, got 0"),
    (["space", "--model", "qwen3-235b", "--gpus", "-8"], r"--gpus must be a positive integer, got -8"),
    (["space", "--model", "qwen3-235b", "--gpus", "many"], r"--gpus must be a positive integer, got 'many'"),
    (["space", "--model", "qwen3-235b", "--gpus", "12"], r"does not fill whole nodes of 8 GPUs"),
    (["space", "--model", "qwen3-235b", "--gpus", "256", "--gpu-type", "h1000"], r"unknown GPU type 'h1000'"),
    (["space", "--model", "/nonexistent/config.json", "--gpus", "8"], r"HF config not found"),
    (["space", "--model", "{bad}", "--gpus", "8"], r"is not valid JSON"),
    (["space", "--model", "{mamba}", "--gpus", "8"], r"unsupported model_type 'mamba'; supported:"),
    (["space", "--model", "tiny-dense", "--gpus", "8", "--space", "{badspace}"], r"unknown knob 'tensor_parallel'"),
    (["space", "--model", "tiny-dense", "--gpus", "8", "--space", "{badyaml}"], r"not valid YAML"),
    (["space", "--model", "tiny-dense", "--gpus", "8", "--space", "/nonexistent.yaml"], r"space file not found"),
    (["explain", "--model", "tiny-dense", "--gpus", "8", "--pp", "2", "--pp-layout", "Et|tL",
      "--first-stage-layers", "2"], r"contradictory flags: --pp-layout and --first/--last-stage-layers"),
    (["explain", "--model", "tiny-dense", "--gpus", "8", "--recompute", "partial"], r"Invalid value for '--recompute'"),
    (["space", "--model", "tiny-dense", "--gpus", "8", "--seq-len", "0"], r"--seq-len and --global-batch-size must be positive"),
    (["space", "--model", "tiny-dense", "--gpus", "8", "--top", "-1"], r"--top must be >= 0"),
    (["space", "--gpus", "8"], r"Missing option '--model'"),
    (["space", "--model", "tiny-dense", "--gpus", "8", "--precision", "fp4"], r"Invalid value for '--precision'"),
    (["space", "--model", "tiny-dense", "--gpus", "8", "--gpus-per-node", "0"], r"--gpus-per-node must be a positive"),
    (["frobnicate"], r"No such command 'frobnicate'"),
]


@pytest.mark.parametrize("args,match", BAD_INPUT, ids=[" ".join(a)[:60] for a, _ in BAD_INPUT])
def test_bad_input_is_one_clear_line(capsys, tmp_path, args, match):
    import re

    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "mamba.json").write_text(json.dumps({"model_type": "mamba"}))
    (tmp_path / "badspace.yaml").write_text("name: x\nknobs:\n  tensor_parallel: {values: [1]}\n")
    (tmp_path / "badyaml.yaml").write_text("name: x\nknobs: [\n")
    subst = {"{bad}": str(tmp_path / "bad.json"), "{mamba}": str(tmp_path / "mamba.json"),
             "{badspace}": str(tmp_path / "badspace.yaml"), "{badyaml}": str(tmp_path / "badyaml.yaml")}
    args = [subst.get(a, a) for a in args]
    code, out, err = run(capsys, *args)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert re.search(match, lines[0]), lines[0]
    assert "Traceback" not in err + out


def test_console_script_exit_code_and_no_traceback():
    """The installed entry point behaves like main(): exit 2, one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "space", "--model", "nope", "--gpus", "8"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_explain_shows_where_the_time_goes_and_the_slowest_stage(capsys):
    """Llama3 70B on 8 stages of 10 layers: the last stage also runs the output layer, so it is the slowest
    (test_cost.test_stage_times_set_the_pipeline_pace); the table and the note say so, and --json carries it."""
    args = ("explain", "--model", "llama3-70b", "--gpus", "64", "--tp", "4", "--pp", "8", "--vpp", "5",
            "--seq-len", "8192", "--global-batch-size", "128", "--precision", "fp8", "--recompute", "selective")
    code, out, _ = run(capsys, *args)
    assert code == 0
    assert "where the" in out and "pipeline_bubble" in out
    stage_rows = [line.split("│")[1:-1] for line in out.splitlines() if line.count("│") == 5]
    stage_rows = [[c.strip() for c in row] for row in stage_rows if row[0].strip() in ("0", "1-6", "7")]
    assert [(r[0], r[1]) for r in stage_rows] == [("0", "10"), ("1-6", "10"), ("7", "10")]
    assert stage_rows[-1][3] == "slowest" and stage_rows[0][3].startswith("-")
    assert "it is stage 7, which also runs the output layer" in " ".join(out.split())
    code, out, _ = run(capsys, *args, "--json")
    predicted = json.loads(out)["predicted"]
    assert set(predicted["stage_microbatch_s"]) == {"0", "1-6", "7"}
    assert max(predicted["stage_microbatch_s"], key=predicted["stage_microbatch_s"].get) == "7"
