"""The Colab notebook, executed as a user would (every cell in order, nbclient), on the tiny preset
and a copy of the shared built data: its download, data and vocabulary cells run the stages, which
find their outputs up to date, and the training cell trains."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT, copy_data

pytestmark = pytest.mark.slow   # runs the four stages from the notebook's cells


def cell_text(cell) -> str:
    return "".join(output.get("text", "") for output in cell.get("outputs", []))


def test_notebook_runs_the_four_stages_and_shows_probe_and_curves(built_data, tmp_path, monkeypatch):
    data_dir = Path(copy_data(built_data, tmp_path))
    for name, value in {"IMDB_BERT_PRESET": "tiny", "IMDB_BERT_URL": "file:///nonexistent", "PYTHONPATH": ROOT,
                        "IMDB_BERT_SETTINGS": f"--set data_dir={data_dir} --set runs_dir={data_dir / 'runs'}"}.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(os.path.join(ROOT, "notebooks", "imdb_bert.ipynb"), as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for stage in ["download", "data_prep", "tokeniser_build"]:
        assert f"{stage}: up to date" in cell_text(next(cell for cell in code if f"{stage}." in cell.source)), stage
    training = next(cell for cell in code if "model_training.py" in cell.source)
    assert cell_text(training).count("'predicted mask token'") >= 3 * 5   # top-5 fills, every epoch
    assert "validation masked-token accuracy" in cell_text(training)
    shown = next(cell for cell in code if "curves.png" in cell.source)
    assert any("image/png" in output.get("data", {}) for output in shown.outputs)
    assert "held-out masked-token accuracy" in cell_text(shown)
    assert os.path.isfile(data_dir / "runs" / "tiny" / "curves.png")
    assert "'predicted mask token'" in cell_text(next(cell for cell in code if "predict.py" in cell.source))
