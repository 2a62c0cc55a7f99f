"""Which devices train: the `strategy` config value as a `tf.distribute` strategy.

    auto          several GPUs visible: MirroredStrategy over them; otherwise the one default device
    mirrored      MirroredStrategy over every GPU, or over every logical CPU device when there is no GPU
    multi_worker  MultiWorkerMirroredStrategy; the cluster and this process's place in it come from
                  the TF_CONFIG environment variable, one process per machine
    tpu           TPUStrategy on the TPU the cluster resolver finds (a Colab TPU runtime)

`batch_size` is always the global batch: Keras splits each batch across the replicas, and in a
multi-worker run each worker reads its own share of the batches (`inputs.shard_by_batch`).

The TF_CONFIG helpers import nothing heavy, so a stage can work out its run folder (non-chief
workers write theirs next to the chief's) before deciding whether TensorFlow is needed at all.
"""

from __future__ import annotations

import dataclasses
import json
import os

from imdb_bert.artifacts import StageError


def cpu_description() -> str:
    """"AMD EPYC family 26 AVX512_BF16 2 cores": the facts a CPU figure's step rate depends on (lscpu)."""
    import subprocess

    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
    except OSError:
        lines = []
    facts = {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in lines if ":" in line)}
    bf16 = "AVX512_BF16" if "avx512_bf16" in facts.get("Flags", "").split() else "AVX2 no bf16"
    return f"{facts.get('Model name', '?')} family {facts.get('CPU family', '?')} {bf16} {os.cpu_count()} cores"


def cluster_task() -> tuple[int, bool]:
    """(this task's index, whether it is the chief) from TF_CONFIG; a StageError if it is unusable.

    The chief is the task of type "chief", or worker 0 when the cluster names no chief.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise StageError("strategy=multi_worker needs the TF_CONFIG environment variable (the cluster's "
                         "worker addresses and this process's task): see docs/devices.md, 'Several machines'")
    try:
        tf_config = json.loads(raw)
        cluster, task_type, index = tf_config["cluster"], tf_config["task"]["type"], int(tf_config["task"]["index"])
        if not cluster.get("worker"):
            raise KeyError("worker")
    except (ValueError, KeyError, TypeError) as error:
        raise StageError(f"TF_CONFIG is not a usable cluster description ({type(error).__name__}: {error}); "
                         'it needs {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
                         '"index": N}}') from None
    return index, task_type == "chief" or (task_type == "worker" and index == 0 and "chief" not in cluster)


def worker_config(config):
    """The config this process trains with. A multi-worker run's non-chief workers train the same
    model in step with the chief but write their run folder (and in-progress checkpoints) to
    `<run>.worker<N>`, so that workers sharing a disk never write the same files."""
    if config.strategy != "multi_worker":
        return config
    index, chief = cluster_task()
    return config if chief else dataclasses.replace(config, run_name=f"{config.run_name or config.preset}.worker{index}")


def make_strategy(name: str):
    """The `tf.distribute.Strategy` for a `strategy` config value. Create it before any other
    TensorFlow work: MultiWorkerMirroredStrategy and TPU initialisation must come first."""
    import tensorflow as tf

    if name == "multi_worker":
        cluster_task()  # a clear message before TensorFlow's own
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as error:
            raise StageError(f"strategy=tpu but no TPU was found ({str(error).splitlines()[0]}); on Colab "
                             "pick Runtime > Change runtime type > TPU, elsewhere use strategy=auto") from None
        return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([device.name for device in gpus])
    return tf.distribute.get_strategy()


def describe(strategy) -> str:
    """One line naming the strategy and how many replicas train in step."""
    return f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s) in sync"
