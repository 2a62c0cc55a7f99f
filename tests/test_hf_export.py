"""export_hf.py: a run as a Hugging Face transformers folder, loaded by transformers in a fresh process
(no code of ours) for tiny runs of both norm positions: the same logits, fills and token ids."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, one_line_error, run_stage

PROBE = "i have watched this [MASK] and it was awesome"
SENTENCES = [PROBE, "the [MASK] was [MASK] good, but the ending [MASK]", "[MASK] film"]
# Raw review text on which the two tokenizers' normalisations differ unless data_prep's cleaning evens
# them out: Windows-1252 leftovers, accents typed as apostrophes, NFKC forms, ß, invisible characters.
UNEVEN_REVIEWS = ["It\xb4s a \x93gem\x94\x97really. Jurassik\xa8 3\xb3", "Stra\xdfe, \x8eI\x9eEK and the \ufb01lm",
                  "soft\u00adhyphen, zero\u200bwidth, \uff26\uff55\uff4c\uff4c width, caf\xe9 na\xefve \u6620\u753b"]


def what_transformers_makes_of(folder, request, tmp_path):
    """tests/hf_reference.py in a fresh process, from a folder where none of our code is importable."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "hf_reference.py")], cwd=str(tmp_path),
                            env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
                            input=json.dumps(dict(request, folder=folder)), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("norm_position, architecture", [("pre", "MegatronBertForMaskedLM"),
                                                         ("post", "BertForMaskedLM")])
def test_transformers_gives_the_same_logits_fills_and_token_ids(float32_runs, tmp_path, norm_position, architecture):
    from imdb_bert import corpus, inputs, probe

    data_dir, run_dir = float32_runs[norm_position]
    out = str(tmp_path / "hf")
    run_stage(["export_hf.py", "--run", run_dir, "--out", out], data_dir)
    assert sorted(os.listdir(out)) == ["config.json", "manifest.json", "model.safetensors", "special_tokens_map.json",
                                       "tokenizer_config.json", "vocab.txt"]
    model, tokenizer, tokens, run_config = probe.load_run(run_dir)
    ids = [inputs.encode_with_masks(tokenizer, sentence) for sentence in SENTENCES]
    positions = [[index for index, token in enumerate(sentence) if token == inputs.MASK_ID] for sentence in ids]
    prepared = os.path.join(data_dir, "prepared")
    texts = [text for split in ("validation", "dev", "train") for text in corpus.split_texts(prepared, split)][:200]
    texts += [corpus.clean_review(review) for review in UNEVEN_REVIEWS]
    answer = what_transformers_makes_of(out, {"ids": ids, "positions": positions, "probe": PROBE, "top_k": 5,
                                              "texts": texts}, tmp_path)
    assert answer["architecture"] == architecture
    for sentence_ids, sentence_positions, theirs in zip(ids, positions, answer["logits"]):
        ours = model({"input_ids": np.array([sentence_ids]), "masked_positions": np.array([sentence_positions])},
                     training=False)
        assert np.abs(np.asarray(ours)[0] - np.array(theirs)).max() <= 1e-4

    fills = json.loads(run_stage(["fill_mask.py", "--run", run_dir, "--json", PROBE], data_dir).stdout)
    assert [fill["predicted mask token"] for fill in fills] == [token for token, _ in answer["fills"]]
    assert np.abs(np.array([fill["probability"] for fill in fills]) - np.array([p for _, p in answer["fills"]])).max() <= 1e-4

    assert len(texts) == 200 + len(UNEVEN_REVIEWS)
    ours = inputs.tokenize_reviews(tokenizer, texts).to_list()
    assert answer["token_ids"] == ours


def test_export_refuses_an_existing_folder_and_a_damaged_run(float32_runs, tmp_path):
    data_dir, run_dir = float32_runs["pre"]
    out = tmp_path / "hf"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    one_line_error(run_stage(["export_hf.py", "--run", run_dir, "--out", str(out)], data_dir, check=False),
                   f"{out} already exists: add --force to replace it")
    assert os.listdir(out) == ["mine.txt"]
    damaged = str(tmp_path / "damaged")
    shutil.copytree(run_dir, damaged, ignore=shutil.ignore_patterns("hf"))
    with open(os.path.join(damaged, "model.keras"), "r+b") as handle:
        handle.truncate(100)
    one_line_error(run_stage(["export_hf.py", "--run", damaged, "--out", str(tmp_path / "other")], data_dir, check=False),
                   "is damaged: model.keras is shorter than written")
    assert not os.path.exists(tmp_path / "other")


def test_settings_transformers_cannot_hold_are_named():
    from imdb_bert import hf_export

    assert hf_export.unsupported({"tie_embeddings": True, "activation": "relu",
                                  "norm_position": "pre"}) is None
    assert "tie_embeddings=false" in hf_export.unsupported({"tie_embeddings": False, "norm_position": "pre"})
