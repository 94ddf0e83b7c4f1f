"""The search's terminal output: the trial progress bar and the plain-line fallback for logs."""

from __future__ import annotations

import io

from rich.console import Console

from autotune import search as S
from autotune.search import Progress
from autotune.search_display import LiveProgress, progress_line
from autotune.study import TrialRecord


def _progress(**kw) -> Progress:
    best = TrialRecord(number=3, config_key="tp2.pp1", config={}, status="completed", predicted={},
                       measured={"tokens_per_s_per_gpu": 1234.5})
    return Progress(done=2, running=1, pruned=1, failed=1, best=best, planned=10,
                    events=["trial 3 completed"], **kw)


def test_progress_line_has_every_count_and_the_best():
    line = progress_line(_progress())
    assert line == "trials: 2 done, 1 running, 1 pruned, 1 failed; best 1,234.5 tokens/s/GPU (trial 3)"


def test_terminal_shows_a_bar_of_finished_over_planned_trials(monkeypatch):
    monkeypatch.setattr(S, "clock", lambda: 100.0)
    out = io.StringIO()
    con = Console(file=out, force_terminal=True, width=160, color_system=None)
    with LiveProgress(con) as live:
        live(_progress(deadline=100.0 + 125))
    text = out.getvalue()
    assert "trial 3 completed" in text
    assert "4/10" in text  # done + pruned + failed of --trials
    assert "time budget left 2:05" in text and "best 1,234.5 tokens/s/GPU" in text


def test_not_a_terminal_prints_plain_lines():
    out = io.StringIO()
    con = Console(file=out, force_terminal=False, width=160)
    with LiveProgress(con) as live:
        live(_progress())
    assert out.getvalue().splitlines() == ["trial 3 completed", progress_line(_progress())]
