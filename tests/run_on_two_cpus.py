"""Run a stage script with this machine's CPU split into two logical devices, as a stand-in for a
two-GPU machine: `python tests/run_on_two_cpus.py model_training.py --set strategy=mirrored ...`."""

import os
import runpy
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
script = os.path.abspath(sys.argv[1])
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name="__main__")
