import pytest

import config


def test_presets_build_and_validate():
    for name in config.PRESETS:
        assert config.make_config(name).preset == name


def test_gpu_preset_keeps_the_original_hyperparameters():
    gpu = config.make_config("gpu")
    assert (gpu.vocab_size, gpu.max_seq_len, gpu.batch_size, gpu.hidden_size, gpu.num_heads, gpu.ffn_size,
            gpu.num_layers, gpu.dropout, gpu.epochs, gpu.lr_schedule) == \
        (30000, 256, 32, 256, 4, 512, 4, 0.0, 10, "transformer")


def test_overrides_are_typed():
    chosen = config.make_config("tiny", {"epochs": "7", "learning_rate": "1e-3", "tie_embeddings": "false",
                                         "probe_phrases": "a [MASK] b | c [MASK]"})
    assert chosen.epochs == 7 and chosen.learning_rate == 1e-3 and chosen.tie_embeddings is False
    assert chosen.probe_phrases == ("a [MASK] b", "c [MASK]")


@pytest.mark.parametrize("overrides, message", [
    ({"no_such_key": "1"}, "unknown config key 'no_such_key'"),
    ({"epochs": "three"}, "epochs takes an int"),
    ({"hidden_size": "-64"}, "hidden_size must be positive"),
    ({"mask_rate": "1.5"}, "mask_rate must be between 0 and 1"),
    ({"mask_rate": "0"}, "mask_rate must be between 0 and 1"),
    ({"num_heads": "5"}, "num_heads (5) must divide hidden_size"),
    ({"source": "web"}, "source must be one of"),
    ({"embedding_init": "glove"}, "embedding_init must be one of random, ppmi_svd, got 'glove'"),
    ({"embedding_init": "ppmi_svd", "vocab_size": "100", "hidden_size": "128", "num_heads": "2"},
     "embedding_init ppmi_svd needs hidden_size (128) below vocab_size (100)"),
    ({"tie_embeddings": "maybe"}, "tie_embeddings takes true or false"),
    ({"short_seq_len": "32"}, "short_seq_len 32 needs"),   # tiny trains by epochs, not train_minutes
    ({"short_seq_len": "64", "train_minutes": "1"}, "short_seq_len < max_seq_len (64)"),
    ({"steps_per_execution": "0"}, "steps_per_execution must be a positive divisor of steps_per_epoch (30), got 0"),
    ({"steps_per_execution": "4"}, "steps_per_execution must be a positive divisor of steps_per_epoch (30), got 4"),
])
def test_bad_overrides_name_the_problem(overrides, message):
    with pytest.raises(config.ConfigError) as raised:
        config.make_config("tiny", overrides)
    assert message in str(raised.value)


def test_unknown_preset():
    with pytest.raises(config.ConfigError, match="unknown preset"):
        config.make_config("huge")


def test_describe_lists_preset_and_values():
    text = config.describe(config.make_config("tiny"))
    assert text.startswith("config: preset=tiny") and "vocab_size = 1000" in text


def test_a_renamed_key_still_takes_its_old_name(capsys):
    assert config.make_config("cpu", {"validation_batches": "5"}).dev_batches == 5
    assert "validation_batches is now called dev_batches" in capsys.readouterr().err
