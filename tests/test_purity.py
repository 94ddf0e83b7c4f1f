"""The pure side (spec -> space -> constraints) imports no heavy package and does no I/O at import."""

from __future__ import annotations

import subprocess
import sys

PURE_MODULES = ["autotune.model_spec", "autotune.params", "autotune.model_catalog", "autotune.cluster",
                "autotune.config", "autotune.pipeline", "autotune.constraints", "autotune.space",
                "autotune.run_settings"]
HEAVY = ["torch", "megatron", "optuna", "ray", "transformer_engine"]


def test_pure_modules_import_without_heavy_packages():
    """Import every pure module with the heavy packages made unimportable."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {HEAVY!r}: raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        + "".join(f"import {m}\n" for m in PURE_MODULES)
        + f"assert not any(m.split('.')[0] in {HEAVY!r} for m in sys.modules), sorted(sys.modules)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
