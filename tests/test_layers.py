"""The package's layers (.importlinter): every module imports only from the layers below it, and the annotation app
never imports the training stack. Runs import-linter's own checker, as `make lint` does."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_imports_follow_the_layer_contract():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    proc = subprocess.run([exe, "--config", str(ROOT / ".importlinter")], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 broken" in proc.stdout


def test_methods_are_listed_once():
    """Every method comes from the registry: no module outside laffi/methods/ spells the list of method names (a
    list that names coh and refine side by side is one)."""
    from laffi import methods

    names = methods.names()
    assert names[:3] == ["base", "sft", "laffi"] and "laffi+revise" in names and "critique" in names
    literal = '"coh", "refine"'
    offenders = [p for p in (ROOT / "laffi").rglob("*.py") if "methods" not in p.parts
                 and literal in p.read_text(encoding="utf-8")]  # fmt: skip
    assert offenders == []
