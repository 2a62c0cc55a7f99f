"""Every use of a library's private API, in one place, with the versions it was checked against.

Each function here reaches past a library's public surface; each says why and links the upstream
issue where there is one. They call `require` first: with another version installed than the
one checked (and pinned in requirements.txt), the stage stops with one line naming the mismatch
instead of misbehaving silently.

  tensorflow-text 2.21.1
    - `BasicTokenizer` (tensorflow_text.python.ops.bert_tokenizer): the exact split and
      lower-casing `BertTokenizer` applies before WordPiece, to count words the same way. Not
      exported at the package's top level.
    - `wordpiece_tokenizer_learner_lib` (tensorflow_text.tools.wordpiece_vocab): the WordPiece
      learner behind `bert_vocab_from_dataset`, called pass by pass so the threshold search can be
      predicted instead of bisected (vocab.learn_wordpiece).
  keras 3.15.1
    - `TensorBoard._val_dir`: the log folder of what `fit` measures on `validation_data`, fixed to
      `validation`; ours is the dev split (the held-out one is called validation), so it is renamed.
    - `Model._symbolic_build` / `_maybe_symbolic_build`, `train_step` / `test_step`: two bugs stop
      `fit` under MultiWorkerMirroredStrategy (keras-team/keras#20329, tensorflow/tensorflow#72388).
"""

from __future__ import annotations

import os
from importlib import metadata

from imdb_bert.artifacts import StageError

CHECKED_VERSIONS = {"keras": "3.15.1", "tensorflow-text": "2.21.1"}


def require(package: str, installed: str | None = None) -> None:
    """StageError in one line unless the installed `package` is the version this module was checked with."""
    installed = installed or metadata.version(package)
    wanted = CHECKED_VERSIONS[package]
    if installed != wanted:
        raise StageError(f"{package} {installed} is installed, but imdb-bert relies on private parts of "
                         f"{package} {wanted} (imdb_bert/private_apis.py): pip install -r requirements.txt")


def basic_tokenizer(**params):
    """tensorflow-text's `BasicTokenizer`: BERT's split on whitespace and punctuation, lower-cased."""
    require("tensorflow-text")
    from tensorflow_text.python.ops.bert_tokenizer import BasicTokenizer

    return BasicTokenizer(**params)


def wordpiece_learner():
    """The module of tensorflow-text's WordPiece learner (`learn_with_thresh`, `get_input_words`, ...)."""
    require("tensorflow-text")
    from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib

    return wordpiece_tokenizer_learner_lib


def prepare_multi_worker_fit(model, dataset) -> None:
    """Work around two Keras 3 bugs that stop `fit`/`evaluate` under MultiWorkerMirroredStrategy
    (call inside the strategy's scope, after `compile`).

    1. Before the first step Keras all-reduces one input batch across the workers just to learn its
       shapes, which fails for dict inputs (keras-team/keras#20329) and could not work for batches
       whose padded lengths differ between workers. Here the loss, metric and optimizer state is
       built from `dataset`'s element spec instead, and that step is skipped.
    2. Keras averages each step's logged values across workers along axis 0, which fails for scalars
       (tensorflow/tensorflow#72388). Here each step's logs are given that axis.
    Neither changes what is trained: gradients are all-reduced by the optimizer as usual.
    """
    require("keras")
    import keras
    import tensorflow as tf

    symbolic = tf.nest.map_structure(lambda spec: keras.KerasTensor(spec.shape, spec.dtype.name),
                                     dataset.element_spec)
    model._symbolic_build(data_batch=symbolic)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    for name in ("train_step", "test_step"):
        step = getattr(model, name)
        setattr(model, name, lambda data, step=step: {key: tf.reshape(value, [1])
                                                      for key, value in step(data).items()})


def tensorboard_naming_dev(log_dir: str, **options):
    """Keras' TensorBoard callback writing what `fit` measures on `validation_data` under `log_dir/dev`
    (Keras names that folder `validation`, which here is the held-out split, never seen in training)."""
    require("keras")
    import keras

    class DevTensorBoard(keras.callbacks.TensorBoard):
        def set_model(self, model):
            super().set_model(model)
            self._val_dir = os.path.join(self._log_write_dir, "dev")

    return DevTensorBoard(log_dir, **options)
