
import pytest

from conftest import write_acl_imdb
from imdb_bert import artifacts, corpus
from imdb_bert.corpus import Review


def test_clean_review_removes_html_and_folds_space():
    raw = "Great film!<br /><br />The &quot;best&quot; &amp; <i>only</i>\tone.  \n"
    assert corpus.clean_review(raw) == 'Great film! The "best" & only one.'


def test_clean_review_keeps_case_and_escaped_tags_as_text():
    assert corpus.clean_review("I LOVED it &lt;3") == "I LOVED it <3"
    assert corpus.clean_review("a &lt;b&gt; tag") == "a <b> tag"


def test_clean_review_drops_control_and_replacement_characters():
    assert corpus.clean_review("bad\x00byte\ufffdhere") == "bad byte here"


def test_clean_review_repairs_windows_1252_and_normalises_unicode():
    assert corpus.clean_review("a film\x97really, it\xb4s \x93good\x94") == "a film\u2014really, it's \u201cgood\u201d"
    assert corpus.clean_review("\x8eize\u00adk \u2460 Stra\xdfe") == "\u017dizek 1 Strasse"   # NFKC, soft hyphen dropped


def test_decode_bytes_replaces_invalid_utf8():
    text, replaced = corpus.decode_bytes(b"caf\xe9 ok")
    assert replaced and text.startswith("caf") and text.endswith(" ok")
    assert corpus.decode_bytes("café".encode()) == ("café", False)


def test_dedupe_happens_before_split_and_no_validation_text_is_in_train(fixture_reviews):
    reviews = [Review(text, label) for text, label in fixture_reviews]
    # Duplicates that differ only in markup and spacing, plus empty reviews.
    noisy = reviews + [Review(r.text.replace(" ", "  ") + "<br />", r.label) for r in reviews[:50]]
    noisy += [Review("   <br />  ", 1), Review("", 0)]
    kept, counts = corpus.clean_and_dedupe(noisy)
    assert counts == {"read": len(noisy), "empty_dropped": 2, "duplicates_removed": 50, "kept": len(reviews)}
    splits = corpus.split_reviews(kept, 0.2, 0.1, seed=3)
    train, dev, validation = ({r.text for r in splits[name]} for name in ("train", "dev", "validation"))
    assert not train & validation and not train & dev and not dev & validation
    assert len(train) + len(dev) + len(validation) == len(kept)
    assert len(validation) == round(0.2 * len(kept)) and len(dev) == round(0.1 * len(kept))


def test_carving_a_dev_split_leaves_the_held_out_reviews_unchanged(fixture_reviews):
    reviews = [Review(text, label) for text, label in fixture_reviews]
    small, large = (corpus.split_reviews(reviews, 0.2, fraction, seed=3) for fraction in (0.05, 0.3))
    assert small["validation"] == large["validation"]
    assert len(large["dev"]) > len(small["dev"]) and len(large["train"]) < len(small["train"])


def test_split_is_deterministic_for_a_seed(fixture_reviews):
    reviews = [Review(text, label) for text, label in fixture_reviews]
    first = corpus.split_reviews(reviews, 0.1, 0.1, seed=5)
    assert first == corpus.split_reviews(reviews, 0.1, 0.1, seed=5)
    assert first != corpus.split_reviews(reviews, 0.1, 0.1, seed=6)


def test_read_official_folder_with_labels_and_bad_bytes(tmp_path, fixture_reviews):
    write_acl_imdb(str(tmp_path), fixture_reviews[:20])
    with open(tmp_path / "aclImdb" / "train" / "unsup" / "0_0.txt", "wb") as out:
        out.write(b"an unlabelled review with a bad byte \xff here")
    reviews, undecodable = corpus.read_official(str(tmp_path / "aclImdb"))
    assert len(reviews) == 21 and undecodable == 1
    assert sorted({r.label for r in reviews}) == [-1, 0, 1]


def test_read_official_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(artifacts.StageError, match="download.sh"):
        corpus.read_official(str(tmp_path))


def test_shards_round_trip(tmp_path, fixture_reviews):
    reviews = [Review(text, label) for text, label in fixture_reviews[:30]]
    names = corpus.write_shards(str(tmp_path), "train", reviews, num_shards=3)
    artifacts.write_manifest(str(tmp_path), "data_prep", {"config": {}, "inputs": {}}, shards={"train": names})
    assert sorted(corpus.split_texts(str(tmp_path), "train")) == sorted(r.text for r in reviews)


def test_tfds_source_reads_all_three_splits():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        reviews, undecodable = corpus.read_tfds()
    assert len(reviews) == 18 and undecodable == 0
    assert all(isinstance(r.text, str) for r in reviews)
