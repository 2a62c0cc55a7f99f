"""Seeing training: TensorBoard events and the curves PNG in the run folder, progress bars on a
terminal only."""

from __future__ import annotations

import csv
import fcntl
import glob
import os
import re
import pty
import struct
import subprocess
import termios

from conftest import ROOT, copy_data, stage_command, stage_environment


def scalar_tags(folder: str) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(folder)
    events.Reload()
    return set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])


def test_run_folder_has_tensorboard_logs_and_curves(trained_run):
    run_dir = os.path.join(trained_run[0], "runs", "tiny")
    assert glob.glob(os.path.join(run_dir, "logs", "train", "events.out.tfevents.*"))
    assert {"epoch_loss", "epoch_masked_accuracy", "epoch_learning_rate", "epoch_tokens_per_second"} \
        <= scalar_tags(os.path.join(run_dir, "logs", "train"))
    assert {"epoch_loss", "epoch_masked_accuracy"} <= scalar_tags(os.path.join(run_dir, "logs", "dev"))
    assert sorted(os.listdir(os.path.join(run_dir, "logs"))) == ["dev", "train"]   # the dev split, named so
    with open(os.path.join(run_dir, "history.csv"), newline="") as handle:
        history = list(csv.DictReader(handle))
    assert all(float(row["tokens_per_second"]) > 100 for row in history)
    assert {"dev_loss", "dev_masked_accuracy", "dev_perplexity"} <= set(history[0])      # the dev split, named so
    assert not [key for key in history[0] if key.startswith("val_")]
    rates = [float(row["learning_rate"]) for row in history]
    assert rates[-1] < rates[0]   # the cosine schedule decays
    with open(os.path.join(run_dir, "curves.png"), "rb") as handle:
        png = handle.read()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000


def run_on_terminal(command: list[str]) -> str:
    """Run `command` with stdout and stderr on a pseudo-terminal; return what it wrote."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 120 columns
    process = subprocess.Popen(command, cwd=ROOT, env=stage_environment(), stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:   # the terminal closes when the process ends
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=600) == 0, b"".join(chunks)[-3000:]
    os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace")


def test_progress_bars_show_on_a_terminal_only(built_data, tmp_path):
    data_dir = copy_data(built_data, tmp_path)
    on_terminal = run_on_terminal(stage_command(["tokeniser_build.py", "--force"], data_dir))
    # tqdm's bar itself: "counting words:  50%|█████     | 1/2 [00:01<00:01, 1.00batch/s]".
    assert re.search(r"counting words: +\d+%\|[^|]*\| *\d+/\d+ \[[0-9:]+<[0-9:?]+, *[0-9.?]+ ?(batch/s|s/batch)\]",
                     on_terminal), on_terminal[-2000:]
    piped = subprocess.run(stage_command(["tokeniser_build.py", "--force"], data_dir), cwd=ROOT,
                           env=stage_environment(), capture_output=True, text=True, timeout=600)
    assert piped.returncode == 0
    assert "counting words" not in piped.stdout + piped.stderr


def test_a_history_written_before_the_dev_columns_still_draws_and_resumes(tmp_path):
    from imdb_bert import monitoring, resume

    old = [{"epoch": str(epoch), "loss": "6.0", "masked_accuracy": "0.05", "val_loss": str(6.5 - epoch),
            "val_masked_accuracy": "0.07"} for epoch in range(3)]
    path = str(tmp_path / "curves.png")
    monitoring.save_curves(old, path, "an old run")
    assert os.path.getsize(path) > 10_000
    with open(tmp_path / resume.HISTORY, "w", newline="") as out:
        writer = csv.DictWriter(out, list(old[0]))
        writer.writeheader()
        writer.writerows(old)
    kept = resume.trim_history(str(tmp_path), 2)
    assert [row["dev_loss"] for row in kept] == ["6.5", "5.5"]
    assert open(tmp_path / resume.HISTORY).readline().strip() == "epoch,loss,masked_accuracy,dev_loss,dev_masked_accuracy"
    assert resume.best_validation_loss(str(tmp_path), kept) is None   # no best.keras here


def test_the_curves_name_the_dev_split(tmp_path, monkeypatch):
    import matplotlib.figure

    from imdb_bert import monitoring

    labels = []
    save = matplotlib.figure.Figure.savefig

    def recording(figure, *args, **kwargs):
        labels.extend(text.get_text() for axis in figure.axes if axis.get_legend()
                      for text in axis.get_legend().get_texts())
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording)
    rows = [{"epoch": str(epoch), "loss": "6.0", "masked_accuracy": "0.05", "dev_loss": str(6.5 - epoch),
             "dev_masked_accuracy": "0.07", "learning_rate": "0.001"} for epoch in range(2)]
    monitoring.save_curves(rows, str(tmp_path / "curves.png"), "a run")
    assert labels == ["training", "dev (per-epoch choices; not the held-out reviews)"] * 2
