"""The Optuna study behind `autotune search`: its name, folder, storage and the record of each trial.

One study per (model, cluster, workload, space): the name ends in a short stable hash of those, so
running the same search again finds the same study and never measures a config twice. Everything a
trial measured lives in the study's storage (user attrs keyed by the config's canonical key) and, for
people and scripts, one JSON line per finished trial in results/<study>/trials.jsonl.

optuna is imported lazily: `autotune space` and the pure modules never load it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.cluster import ClusterSpec
from autotune.config import Workload
from autotune.errors import ConfigError
from autotune.model_spec import ModelSpec
from autotune.space import SearchSpace

JOURNAL_FILE = "study.journal"
TRIALS_FILE = "trials.jsonl"
# Trial user attrs; `status` is the trial runner's status, or "pruned" / "interrupted".
ATTR_KEY, ATTR_CONFIG, ATTR_STATUS = "config_key", "config", "status"
ATTR_PREDICTED, ATTR_MEASURED, ATTR_REASON = "predicted", "measured", "reason"


def study_name(model: ModelSpec, cluster: ClusterSpec, workload: Workload, space: SearchSpace,
               allow_cross_node_tp: bool = False, backend: str = "gpu") -> str:
    """`<model>-<N>x<gpu>-<hash8>`, plus `-cpu` for CPU-backend studies (their speeds are not GPU speeds)."""
    identity = {"model": model.to_dict(), "cluster": cluster.model_dump(), "workload": workload.model_dump(),
                "space": space.model_dump(mode="json"), "allow_cross_node_tp": allow_cross_node_tp}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = f"{model.name}-{cluster.num_gpus}x{cluster.gpu.name}-{digest}"
    return name + ("-cpu" if backend == "cpu" else "")


def check_study_name(name: str) -> str:
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ConfigError(f"--study-name must be a plain folder name (no '/', not starting with '.'), got '{name}'")
    return name


def study_dir(out_root: str | Path, name: str) -> Path:
    """results/<study>/, created and proven writable; an unwritable root is a ConfigError."""
    path = Path(out_root) / name
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"--out {out_root} is not writable ({exc.strerror or exc}); pick a folder you can write to")
    return path


def open_study(name: str, folder: Path, storage_url: str | None = None):
    """Create or load the study (maximize measured tokens/s/GPU). Default storage: a journal file in `folder`."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if storage_url is None:
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            storage: Any = JournalStorage(JournalFileBackend(str(folder / JOURNAL_FILE)))
        else:
            storage = optuna.storages.get_storage(storage_url)
        return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    except Exception as exc:  # optuna/sqlalchemy raise many types for a bad URL; all are the user's to fix
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = storage_url if storage_url is not None else str(folder / JOURNAL_FILE)
        raise ConfigError(f"cannot open Optuna storage '{where}': {first}; pass an Optuna storage URL such as "
                          f"sqlite:///results/study.db") from None


@dataclass(frozen=True, kw_only=True)
class TrialRecord:
    """What is known about one trial of the study, as stored in its user attrs."""

    number: int
    config_key: str
    config: dict[str, Any]  # JobConfig.to_megatron_dict()
    status: str  # trial runner status, or "pruned" / "interrupted" / "running"
    predicted: dict[str, Any]
    measured: dict[str, Any] | None = None
    reason: str | None = None  # why pruned or failed

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "config_key": self.config_key, "status": self.status, "config": self.config,
                "predicted": self.predicted, "measured": self.measured, "reason": self.reason}


def records(study) -> list[TrialRecord]:
    """Every trial of the study that carries a config (ours), oldest first."""
    out = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if ATTR_KEY not in a:
            continue
        status = a.get(ATTR_STATUS) or ("running" if t.state.name == "RUNNING" else t.state.name.lower())
        out.append(TrialRecord(number=t.number, config_key=a[ATTR_KEY], config=a.get(ATTR_CONFIG, {}), status=status,
                               predicted=a.get(ATTR_PREDICTED, {}), measured=a.get(ATTR_MEASURED),
                               reason=a.get(ATTR_REASON)))
    return out


def close_interrupted(study) -> int:
    """Trials left RUNNING by a search that died: mark them failed ('interrupted'); they count as tried."""
    import optuna

    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, ATTR_STATUS, "interrupted")
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        n += 1
    return n


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """One line per record, written in one call and fsynced, so a crash never leaves half a line."""
    line = json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
