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


def test_every_character_and_its_continuation_stay_in_a_trimmed_vocabulary(fixture_reviews):
    """Trimming to the exact size drops the rarest tokens, which used to include `##<char>` pieces."""
    texts = [text for text, _ in fixture_reviews[:300]]
    tokens, _ = vocab.learn_vocabulary(texts, vocab_size=400, min_word_count=2)
    assert len(tokens) == 400
    learned_from = [word for word, count in vocab.count_words(texts).items() if count >= 2]
    characters = {character for word in learned_from for character in word}
    missing = [token for character in characters for token in (character, "##" + character) if token not in tokens]
    assert not missing
    # Every word the vocabulary was learned from is spelled without [UNK].
    assert vocab.unknown_rate(vocab.make_tokenizer(tokens), [" ".join(learned_from)]) == 0.0


def test_a_vocabulary_too_small_to_spell_the_corpus_is_refused(fixture_reviews):
    with pytest.raises(artifacts.StageError, match="too small to hold"):
        vocab.learn_vocabulary([text for text, _ in fixture_reviews[:300]], vocab_size=100, min_word_count=2)
