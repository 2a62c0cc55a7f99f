import pytest

from imdb_bert import artifacts, vocab


@pytest.fixture(scope="module")
def learned(fixture_reviews):
    texts = [text for text, _ in fixture_reviews[:300]]
    return vocab.learn_vocabulary(texts, vocab_size=1200, min_word_count=2)


def test_reserved_tokens_have_fixed_ids(learned):
    tokens, _ = learned
    assert tokens[:5] == ["[PAD]", "[UNK]", "[MASK]", "[CLS]", "[SEP]"]
    assert len(set(tokens)) == len(tokens)


def test_vocab_hits_the_target_size_exactly(learned):
    tokens, stats = learned
    assert len(tokens) == 1200
    assert stats["words_learned_from"] < stats["distinct_words"]


def test_tokenizer_lower_cases_and_uses_word_pieces(learned, fixture_reviews):
    tokens, _ = learned
    tokenizer = vocab.make_tokenizer(tokens)
    ids = tokenizer.tokenize(["The MOVIE"]).merge_dims(-2, -1).to_list()[0]
    assert [tokens[i] for i in ids] == ["the", "movie"]
    texts = [text for text, _ in fixture_reviews[300:]]
    assert 0.0 <= vocab.unknown_rate(tokenizer, texts) < 0.02


def test_vocab_file_missing_a_reserved_token_is_refused(tmp_path, learned):
    tokens, _ = learned
    path = tmp_path / "vocab.txt"
    vocab.write_vocabulary(str(path), [t for t in tokens if t != "[MASK]"])
    with pytest.raises(artifacts.StageError, match=r"lacks \[MASK\]"):
        vocab.read_vocabulary(str(path))
    vocab.write_vocabulary(str(path), tokens)
    assert vocab.read_vocabulary(str(path)) == tokens


def test_missing_vocab_file_names_the_stage(tmp_path):
    with pytest.raises(artifacts.StageError, match="tokeniser_build.py"):
        vocab.read_vocabulary(str(tmp_path / "vocab.txt"))
