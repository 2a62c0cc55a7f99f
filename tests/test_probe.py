import keras
import pytest

from conftest import masked_lm_for
from imdb_bert import artifacts, model, probe, vocab

KEYS = {"input_text", "prediction", "probability", "predicted mask token"}


@pytest.fixture(scope="module")
def setup(fixture_reviews, tiny_config):
    tokens = vocab.learn_vocabulary([t for t, _ in fixture_reviews[:200]], 600, 2)[0]
    keras.utils.set_random_seed(2)
    return masked_lm_for(tiny_config, len(tokens)), vocab.make_tokenizer(tokens), tokens


def test_fills_have_the_original_keys_and_real_probabilities(setup):
    masked_lm, tokenizer, tokens = setup
    fills = probe.top_k_fills(masked_lm, tokenizer, tokens, "i have watched this [MASK] and it was awesome", 5, 64)
    assert len(fills) == 5 and all(set(fill) == KEYS for fill in fills)
    probabilities = [fill["probability"] for fill in fills]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 < p < 1.0 for p in probabilities)
    every = probe.top_k_fills(masked_lm, tokenizer, tokens, "this [MASK] was fun", len(tokens), 64)
    assert sum(fill["probability"] for fill in every) == pytest.approx(1.0, abs=1e-3)  # a softmax
    top = fills[0]
    assert top["prediction"] == f"i have watched this {top['predicted mask token']} and it was awesome" or \
        top["predicted mask token"].startswith("##")


def test_several_masks_each_get_fills(setup):
    fills = probe.top_k_fills(*setup, "the [MASK] was [MASK]", 3, 64)
    assert [fill["mask_index"] for fill in fills] == [0, 0, 0, 1, 1, 1]
    assert all(fill["prediction"].count("[MASK]") == 1 for fill in fills)


def test_phrase_without_mask_is_a_clear_error(setup):
    with pytest.raises(artifacts.StageError, match=r"no \[MASK\]"):
        probe.top_k_fills(*setup, "no mask here", 3, 64)


def test_too_long_phrase_is_a_clear_error(setup):
    with pytest.raises(artifacts.StageError, match="at most 64"):
        probe.top_k_fills(*setup, "word " * 80 + "[MASK]", 3, 64)
