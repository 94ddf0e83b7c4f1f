"""rank_space (autotune/cost_ranking.py): configs that fit come first, fastest first, with predicted fields."""

from __future__ import annotations

import numpy as np

from autotune.cluster import ClusterSpec
from autotune.config import Workload
from autotune.cost import predict
from autotune.cost_ranking import PREDICTED_FIELDS, rank_space
from autotune.model_catalog import get_model
from autotune.space import enumerate_space
from autotune.space_files import default_space


def test_ranking_puts_fitting_fastest_first():
    model, cluster = get_model("qwen3-30b-a3b"), ClusterSpec.build(16, "h100")
    res = enumerate_space(default_space(model), model, cluster, Workload(seq_length=4096, global_batch_size=512))
    ranked = rank_space(res)
    fits = ranked.fits_memory[ranked.order]
    assert not np.any(fits[1:] & ~fits[:-1]), "a config that fits ranks below one that does not"
    speed = ranked.tokens_per_s_per_gpu[ranked.order][fits]
    assert np.all(np.diff(speed) <= 0)
    best = int(ranked.order[0])
    one = ranked.predicted(best)
    assert set(PREDICTED_FIELDS) <= set(one)
    assert one["tokens_per_s_per_gpu"] == round(predict(model, cluster, res.job(best)).tokens_per_s_per_gpu, 1)
