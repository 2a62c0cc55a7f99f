"""tf.distribute for real on this CPU: MirroredStrategy over two logical CPU devices, and a
two-worker MultiWorkerMirroredStrategy cluster on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import numpy as np

from conftest import ROOT, copy_data, one_line_error, run_stage, stage_command, stage_environment


def read_metrics(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as handle:
        return json.load(handle)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for each in sockets:
        each.bind(("127.0.0.1", 0))
    ports = [each.getsockname()[1] for each in sockets]
    for each in sockets:
        each.close()
    return ports


def test_two_workers_on_localhost_train_in_step_and_agree_on_the_weights(built_data, tmp_path):
    data_dir = copy_data(built_data, tmp_path)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    command = stage_command(["model_training.py"], data_dir, "strategy=multi_worker", "epochs=2",
                            "steps_per_epoch=40")
    workers = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=stage_environment(TF_CONFIG=json.dumps(
                                    {"cluster": cluster, "task": {"type": "worker", "index": index}})))
               for index in range(2)]
    try:
        outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
        assert "CollectiveAllReduceStrategy with 2 replica(s) in sync" in output
    chief, other = os.path.join(data_dir, "runs", "tiny"), os.path.join(data_dir, "runs", "tiny.worker1")
    assert read_metrics(chief)["optimizer_steps"] == read_metrics(other)["optimizer_steps"] == 80

    from imdb_bert import probe

    chief_weights = probe.load_model(os.path.join(chief, "model.keras")).get_weights()
    other_weights = probe.load_model(os.path.join(other, "model.keras")).get_weights()
    assert len(chief_weights) == len(other_weights) > 10
    for mine, theirs in zip(chief_weights, other_weights):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6)
    assert read_metrics(chief)["validation_masked_cross_entropy"] < 6.2


def test_multi_worker_without_a_cluster_is_one_clear_line(built_data, tmp_path):
    environment = {key: value for key, value in stage_environment().items() if key != "TF_CONFIG"}
    result = run_stage(["model_training.py"], str(tmp_path / "data"), "strategy=multi_worker",
                       environment=environment, check=False)
    one_line_error(result, "TF_CONFIG")
    bad = run_stage(["model_training.py"], str(tmp_path / "data"), "strategy=multi_worker",
                    environment=stage_environment(TF_CONFIG='{"cluster": {}}'), check=False)
    one_line_error(bad, "TF_CONFIG is not a usable cluster description")


# Last in the file, so that the tests above run while the other worker trains the shared run it
# compares with (conftest.built_once).
def test_mirrored_over_two_cpu_devices_trains_like_one_device(trained_run, tmp_path):
    data_dir = copy_data(trained_run, tmp_path)
    mirrored = run_stage([os.path.join("tests", "run_on_two_cpus.py"), "model_training.py"], data_dir,
                         "strategy=mirrored")
    assert "MirroredStrategy with 2 replica(s) in sync" in mirrored.stdout, mirrored.stdout[-3000:]
    single_device = read_metrics(os.path.join(trained_run[0], "runs", "tiny"))
    two_devices = read_metrics(os.path.join(data_dir, "runs", "tiny"))
    # Same global batches split in two: the same number of optimizer steps, and a loss that
    # differs only by rounding and masking draws. Untrained, the loss is ln(1000) = 6.9.
    assert two_devices["optimizer_steps"] == single_device["optimizer_steps"]
    assert two_devices["validation_masked_cross_entropy"] < 6.2
    assert abs(two_devices["validation_masked_cross_entropy"] - single_device["validation_masked_cross_entropy"]) \
        < 0.02 * single_device["validation_masked_cross_entropy"], (two_devices, single_device)
