"""The hand-run helper writes a valid TrialSpec and refuses bad flags in one line."""

from __future__ import annotations

from trial_runner import make_spec as cli
from trial_runner.spec import TrialSpec


def test_flags_become_a_spec(capsys):
    rc = cli.main(["--model", "tiny-moe", "--num-gpus", "4", "--backend", "cpu", "--seq-length", "64",
                   "--global-batch-size", "8", "--tensor-model-parallel-size", "2",
                   "--expert-model-parallel-size", "2", "--sequence-parallel", "true",
                   "--virtual-pipeline-model-parallel-size", "none"])
    assert rc == 0
    spec = TrialSpec.from_json(capsys.readouterr().out)
    p = spec.job.parallel
    assert (p.tp, p.ep, p.sequence_parallel, p.virtual_pipeline_model_parallel_size) == (2, 2, True, None)
    assert spec.model.name == "tiny-moe" and spec.backend == "cpu" and spec.job.workload.seq_length == 64


def test_bad_value_is_one_line_with_the_rule_and_value(capsys):
    assert cli.main(["--model", "tiny-dense", "--num-gpus", "2", "--tensor-model-parallel-size", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err == "error: tensor_model_parallel_size: Input should be greater than 0 (got 0)"


def test_unknown_model_suggests_names(capsys):
    assert cli.main(["--model", "tiny-dens", "--num-gpus", "2"]) == 2
    assert "did you mean tiny-dense" in capsys.readouterr().err
