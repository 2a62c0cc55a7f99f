"""objective=electra: replaced-token detection (ELECTRA) with a generator sharing the encoder's
embeddings, in process on a small shape, and as model_training.py trains it on the tiny preset."""

import csv
import json
import os

import keras
import numpy as np

from conftest import copy_data, run_stage


def small_pretrainer(seed=1):
    from imdb_bert import model

    shape = model.ModelConfig(vocab_size=200, max_seq_len=16, hidden_size=32, num_heads=2, ffn_size=64, num_layers=2,
                              dropout=0.0, norm_position="pre", activation="gelu", tie_embeddings=True)
    keras.utils.set_random_seed(seed)
    return model.build_pretrainer(shape, "electra", generator_size=0.25, discriminator_weight=50.0, seed=seed)


def batch():
    ids = np.random.default_rng(0).integers(5, 200, (4, 16)).astype("int32")
    ids[:, -3:] = 0
    positions = np.array([[1, 2, 0], [3, 4, 5], [1, 0, 0], [2, 3, 4]], "int32")
    masked_ids = np.take_along_axis(ids, positions, 1) * (positions > 0)
    return {"input_ids": ids, "masked_positions": positions}, masked_ids


def test_generator_is_a_quarter_as_wide_and_shares_the_encoders_tables(tmp_path):
    pretrainer = small_pretrainer()
    assert (pretrainer.generator.config.hidden_size, pretrainer.generator.config.num_heads,
            pretrainer.generator.config.ffn_size) == (8, 1, 32)
    assert pretrainer.generator.token_embedding is pretrainer.encoder.token_embedding
    features, masked_ids = batch()
    logits = pretrainer(features)
    assert tuple(logits.shape) == (4, 3, 200) and not pretrainer.losses   # fill-mask use: no replaced-token loss
    pretrainer({**features, "masked_ids": masked_ids}, training=True)
    (loss,) = pretrainer.losses
    # Untrained, the discriminator's cross-entropy is near ln 2, times the weight 50.
    assert 25.0 < float(loss) < 45.0
    path = str(tmp_path / "electra.keras")
    pretrainer.save(path)
    reloaded = keras.saving.load_model(path)
    assert np.abs(np.asarray(reloaded(features)) - np.asarray(logits)).max() == 0.0
    assert np.abs(np.asarray(reloaded.encoder(features["input_ids"]))
                  - np.asarray(pretrainer.encoder(features["input_ids"]))).max() == 0.0


# Two epochs: the loss is compared between the first and the last.
ELECTRA_RUN = ("objective=electra", "run_name=electra", "epochs=2")


def test_model_training_trains_the_tiny_preset_with_electra_and_its_loss_falls(built_data, tmp_path):
    data_dir = copy_data(built_data, tmp_path)
    trained = run_stage(["model_training.py"], data_dir, *ELECTRA_RUN)
    run_dir = os.path.join(data_dir, "runs", "electra")
    with open(os.path.join(run_dir, "history.csv"), newline="") as handle:
        history = list(csv.DictReader(handle))
    assert float(history[-1]["loss"]) < float(history[0]["loss"])
    assert float(history[-1]["masked_loss"]) < float(history[0]["masked_loss"])
    # The logged perplexity is the generator's masked-token one, not exp of the weighted sum.
    generator_entropy = float(history[-1]["masked_loss"])
    assert abs(float(history[-1]["perplexity"]) - np.exp(generator_entropy)) < 1e-3 * np.exp(generator_entropy)
    assert json.load(open(os.path.join(run_dir, "config.json")))["objective"] == "electra"
    assert "the generator's" in open(os.path.join(run_dir, "report.md")).read()
    filled = run_stage(["fill_mask.py", "--json", "i have watched this [MASK] and it was awesome"], data_dir,
                       *ELECTRA_RUN)
    assert len(json.loads(filled.stdout)) == 5
    assert "Traceback" not in trained.stderr


def test_the_cloze_classifier_refuses_an_electra_run_whose_head_is_the_generators():
    import pytest

    from imdb_bert import artifacts, classifier

    settings = classifier.FineTuneConfig(classifier_learning_rate=1e-3, classifier_layer_decay=1.0,
                                         classifier_dropout=0.1, classifier_pooling="cloze")
    with pytest.raises(artifacts.StageError, match="ELECTRA generator"):
        classifier.fine_tune(small_pretrainer(), settings, ["[PAD]"], None, None, epochs=1, steps_per_epoch=1)
