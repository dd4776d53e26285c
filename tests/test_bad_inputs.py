"""The bad-input corpus (tests/bad_inputs/cases.yaml): every case is one line on stderr that names the file and says
what is wrong, exit code 2, no traceback, and no output file (nor temporary file) left behind."""

from pathlib import Path

import pytest
import yaml

from laffi.cli import main

CORPUS = Path(__file__).parent / "bad_inputs"
MANIFEST = yaml.safe_load((CORPUS / "cases.yaml").read_text(encoding="utf-8"))


def test_corpus_is_complete():
    """At least 30 cases, every file of the corpus is a case, and every case's file exists."""
    listed = {c["file"] for c in MANIFEST["cases"]}
    on_disk = {str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file() and p.parent != CORPUS}
    assert len(listed) >= 30 and listed == on_disk


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=lambda c: c["file"])
def test_bad_input_is_one_line_exit_2(case, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out" / "result"
    out.parent.mkdir()
    values = {"file": CORPUS / case["file"], "good": CORPUS / "good.json", "out": out, "tiny": tiny_model_dir,
              "predictions": CORPUS / "good_predictions.json"}  # fmt: skip
    argv = [arg.format(**values) for arg in MANIFEST["commands"][case["command"]]]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith(("Loading weights", "Writing model"))]  # library progress bars
    assert exit_info.value.code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("laffi: error: ") and Path(case["file"]).name in err[0], err
    assert case["expect"] in err[0], err
    assert list(out.parent.iterdir()) == [], "an output (or temporary) file was left behind"
