"""The layering of the package (pyproject.toml, [tool.importlinter]): no module imports from a layer above
it, and the leaf modules import nothing of the package. Checked with import-linter on the real import graph."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is a dev dependency: pip install -e '.[dev]'"
    r = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_fixtures_and_tooling_stay_out_of_the_library():
    for name in ("badcorpus.py", "families.py", "synthetic_screen.py"):
        assert not list((ROOT / "poisonguard").rglob(name)), f"{name} is test tooling: tests/fixtures/"
    assert not (ROOT / "poisonguard" / "screening.py").exists()
