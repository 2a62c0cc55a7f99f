"""Shared logic of the imdb-bert pipeline: corpus, vocabulary, inputs, model, probe, artifacts."""

import os

# TensorFlow's C++ start-up chatter (CUDA stubs, oneDNN notices) buries the stage summaries;
# users who want it can set TF_CPP_MIN_LOG_LEVEL=0 themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
