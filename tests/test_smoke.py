"""Smoke runs of what CI would otherwise never start: benchmark.py on a tiny shape, and the gpu
preset's full model shape (hidden 256, 4 layers, 256-token windows, post-LN, Transformer schedule)
trained for a few steps on this CPU, saved, and served from its raw-string export."""

import json
import os
import re

from conftest import copy_data, run_stage


def test_benchmark_prints_its_table_on_a_tiny_shape(built_data):
    result = run_stage(["benchmark.py", "--preset", "tiny", "--steps", "2", "--rounds", "1", "--skip-vocab",
                        "--pipeline-batches", "5", "--peak-size", "256", "--fit-steps", "8",
                        "--steps-per-execution", "2"], built_data[0])
    assert "Traceback" not in result.stderr
    ours = re.search(r"our step \(\S+\) +(\d+) ms/step +([\d,]+) real tokens/s", result.stdout)
    assert ours and int(ours.group(2).replace(",", "")) > 0, result.stdout[-3000:]
    for row in ["input pipeline", "of which: masking alone", "reference step (float32)", "ours / reference", "MFU",
                "fit, with the per-step callbacks", "fit, 2 steps per call", "peak memory"]:
        assert row in result.stdout, row


def test_the_gpu_preset_shape_trains_saves_and_serves_on_cpu(built_data, tmp_path):
    data_dir = copy_data(built_data, tmp_path)
    # float32: a CPU has no native float16 kernels, and the held-out evaluation at this shape would take
    # most of the test. mixed_float16 (what auto picks on a T4 or V100) trains in test_precision.py and
    # is saved and reloaded in test_model.py, at the tiny shape.
    # Batches of 8 instead of the preset's 32: the shape under test is the model's, and a CPU step at 256 tokens
    # costs seconds per 32 windows.
    short = ["epochs=1", "steps_per_epoch=3", "dev_batches=2", "checkpoint_every_steps=0", "mixed_precision=float32",
             "batch_size=8"]
    for script in ["data_prep.py", "tokeniser_build.py"]:
        run_stage([script, "--preset", "gpu"], data_dir)
    trained = run_stage(["model_training.py", "--preset", "gpu"], data_dir, *short)
    assert "Traceback" not in trained.stderr
    run_dir = os.path.join(data_dir, "runs", "gpu")
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert (config["hidden_size"], config["num_layers"], config["max_seq_len"], config["norm_position"],
            config["lr_schedule"]) == (256, 4, 256, "post", "transformer")
    assert "learning rate peak 0.000988 after 4000 warm-up steps (transformer schedule)" in trained.stdout
    assert "precision float32" in trained.stdout
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert metrics["optimizer_steps"] == 3
    served = run_stage(["predict.py", "--export", os.path.join(run_dir, "fill_mask_export"), "--json",
                        "i have watched this [MASK] and it was awesome"], data_dir)
    fills = json.loads(served.stdout)
    assert len(fills) == 5 and all(0.0 < fill["probability"] < 1.0 for fill in fills)
    # Graph (export) and eager (Keras) kernels may round close runners-up into another order.
    assert fills[0]["predicted mask token"] in [fill["predicted mask token"] for fill in metrics["probe"]]
