"""The rooms of leat_jax and the arrows between them, checked on the source."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.golden_harness import REPO

PKG = REPO / "leat_jax"

# room -> rooms it must never import
ABOVE_MODELS = {"attack", "parallel", "pipeline", "victims", "deepfakes", "engines", "cli"}
EVERY_ROOM = ABOVE_MODELS | {"models", "faces", "transforms", "checkpoints", "errors", "xla_cpu"}
FORBIDDEN = {
    "errors": EVERY_ROOM - {"errors"},  # SetupError sits below every room
    "xla_cpu": EVERY_ROOM - {"xla_cpu"},
    "checkpoints": ABOVE_MODELS | {"models", "faces", "transforms"},
    "models": ABOVE_MODELS | {"faces", "transforms"},
    # Image transforms sit beside the victims, below the attack, and know no network.
    "transforms": ABOVE_MODELS | {"models", "faces"},
    "faces": ABOVE_MODELS,
    "victims": {"attack", "parallel", "pipeline", "deepfakes", "engines", "cli"},
    "deepfakes": {"attack", "parallel", "pipeline", "engines", "cli"},
    "attack": {"pipeline", "parallel", "deepfakes", "engines", "cli"},
    "parallel": {"pipeline", "deepfakes", "engines", "cli"},
    # The engines run the pipeline's stages; only the CLI picks an engine.
    "pipeline": {"engines", "cli"},
    "engines": {"cli"},
}


def _room(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_arrows_run_one_way():
    bad = []
    for path in PKG.rglob("*.py"):
        room = _room(path)
        for mod in _imports(path):
            parts = mod.split(".")
            if parts[0] in ("torch", "converters", "benchmarks", "tests"):
                bad.append(f"{path.relative_to(REPO)} imports {mod}")
            if parts[0] == "leat_jax" and len(parts) > 1 and parts[1] in FORBIDDEN.get(room, ()):
                bad.append(f"{path.relative_to(REPO)} ({room}) imports {mod}")
    # The one allowed exception: the CLI's convert command reaches converters lazily.
    bad = [b for b in bad if not b.startswith("leat_jax/cli.py imports converters")]
    assert not bad, "\n".join(bad)


def test_leat_jax_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import leat_jax, leat_jax.attack, leat_jax.parallel, leat_jax.victims, leat_jax.pipeline, leat_jax.cli\n"
        "import leat_jax.faces; leat_jax.faces.load_detector()  # the shipped weights need no torch\n"
        "from leat_jax import victims, deepfakes\n"
        "for n in victims.NAMES: victims.get(n)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
