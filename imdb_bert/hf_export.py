"""A trained masked LM as a Hugging Face `transformers` model folder, written with no torch.

Our encoder is one of two architectures `transformers` ships, by where its layer norms sit:
- post-LN (the gpu preset, the original BERT): `BertForMaskedLM` — a layer norm on the embeddings,
  one after each residual sum;
- pre-LN (the cpu preset): the Megatron-BERT layout, `MegatronBertForMaskedLM` — no embedding norm,
  one before each sublayer (`attention.ln`, `ln`) and a final one (`encoder.ln`).
Both put BERT's head on it (dense, activation, layer norm, the token table transposed plus a bias).
The token-type table, which we do not have, is zeros; a bias or norm offset our run has none of
(`use_bias=false`) is zeros, which is what leaving it out computes.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from imdb_bert import vocab
from imdb_bert.artifacts import StageError

ARCHITECTURES = {"post": ("bert", "BertForMaskedLM"), "pre": ("megatron-bert", "MegatronBertForMaskedLM")}
# transformers' names for our activations: GELU with the tanh approximation, as gelu_tanh computes.
HIDDEN_ACT = {"gelu": "gelu_pytorch_tanh", "relu": "relu"}
LAYER_NORM_EPS = 1e-6   # every LayerNormalization in imdb_bert/model.py


def unsupported(run_config: dict) -> str | None:
    """Why a run with `run_config` cannot be written as a transformers model, or None if it can."""
    if not run_config.get("tie_embeddings", True):
        return "tie_embeddings=false: the export writes BERT's head, which scores against the token table"
    if run_config.get("activation", "gelu") not in HIDDEN_ACT:
        return f"activation={run_config['activation']} has no transformers hidden_act"
    if run_config.get("norm_position") not in ARCHITECTURES:
        return f"norm_position={run_config.get('norm_position')} matches no transformers architecture"
    return None


def hf_config(run_config: dict, vocab_size: int) -> dict:
    model_type, architecture = ARCHITECTURES[run_config["norm_position"]]
    return {"model_type": model_type, "architectures": [architecture], "vocab_size": vocab_size,
            "hidden_size": run_config["hidden_size"], "num_hidden_layers": run_config["num_layers"],
            "num_attention_heads": run_config["num_heads"], "intermediate_size": run_config["ffn_size"],
            "hidden_act": HIDDEN_ACT[run_config["activation"]], "max_position_embeddings": run_config["max_seq_len"],
            "type_vocab_size": 2, "layer_norm_eps": LAYER_NORM_EPS, "pad_token_id": vocab.RESERVED_TOKENS.index(vocab.PAD),
            "hidden_dropout_prob": run_config["dropout"], "attention_probs_dropout_prob": run_config["dropout"],
            "initializer_range": 0.02, "position_embedding_type": "absolute", "tie_word_embeddings": True,
            "torch_dtype": "float32"}


def _weights(layer) -> dict[str, np.ndarray]:
    """A layer's weights by the last part of their path (`kernel`, `bias`, `query/kernel`...), float32."""
    prefix = layer.path + "/"
    return {weight.path[len(prefix):]: np.asarray(weight.numpy(), dtype=np.float32) for weight in layer.weights}


def _norm(layer) -> tuple[np.ndarray, np.ndarray]:
    gamma = np.asarray(layer.gamma.numpy(), np.float32)
    beta = np.zeros_like(gamma) if layer.beta is None else np.asarray(layer.beta.numpy(), np.float32)
    return gamma, beta


def tensors(masked_lm) -> dict[str, np.ndarray]:
    """Every tensor of the transformers model, by its name there, from a `BertMaskedLM`."""
    encoder, head = masked_lm.encoder, masked_lm.head
    config = encoder.config
    hidden = config.hidden_size
    out: dict[str, np.ndarray] = {}

    def put(name, value, shape):
        value = np.ascontiguousarray(value, dtype=np.float32)
        if value.shape != tuple(shape):
            raise StageError(f"hf export: {name} has shape {value.shape}, transformers wants {tuple(shape)}")
        out[name] = value

    def put_norm(name, layer):
        gamma, beta = _norm(layer)
        put(f"{name}.weight", gamma, (hidden,))
        put(f"{name}.bias", beta, (hidden,))

    def put_dense(name, layer, in_size, out_size):
        weights = _weights(layer)
        put(f"{name}.weight", weights["kernel"].T, (out_size, in_size))
        put(f"{name}.bias", weights.get("bias", np.zeros(out_size, np.float32)), (out_size,))

    token_table = encoder.token_embedding.embeddings.numpy()
    put("bert.embeddings.word_embeddings.weight", token_table, (config.vocab_size, hidden))
    put("bert.embeddings.position_embeddings.weight", encoder.position_embedding.positions.numpy(),
        (config.max_seq_len, hidden))
    put("bert.embeddings.token_type_embeddings.weight", np.zeros((2, hidden)), (2, hidden))
    pre = config.norm_position == "pre"
    if not pre:
        put_norm("bert.embeddings.LayerNorm", encoder.get_layer("embedding_norm"))
    for index in range(config.num_layers):
        block = encoder.get_layer(f"block_{index}")
        prefix = f"bert.encoder.layer.{index}"
        attention = _weights(block.attention)
        for part in ("query", "key", "value"):
            # Keras keeps a projection as [hidden, heads, head_size]; torch's Linear as [heads * head_size, hidden].
            kernel = attention[f"{part}/kernel"]
            put(f"{prefix}.attention.self.{part}.weight", kernel.reshape(hidden, -1).T, (hidden, hidden))
            bias = attention.get(f"{part}/bias", np.zeros(kernel.shape[1:], np.float32))
            put(f"{prefix}.attention.self.{part}.bias", bias.reshape(-1), (hidden,))
        kernel = attention["attention_output/kernel"]   # [heads, head_size, hidden]
        put(f"{prefix}.attention.output.dense.weight", kernel.reshape(-1, hidden).T, (hidden, hidden))
        put(f"{prefix}.attention.output.dense.bias", attention.get("attention_output/bias", np.zeros(hidden)), (hidden,))
        put_dense(f"{prefix}.intermediate.dense", block.ffn_in, hidden, config.ffn_size)
        put_dense(f"{prefix}.output.dense", block.ffn_out, config.ffn_size, hidden)
        if pre:
            put_norm(f"{prefix}.attention.ln", block.attention_norm)
            put_norm(f"{prefix}.ln", block.ffn_norm)
        else:
            put_norm(f"{prefix}.attention.output.LayerNorm", block.attention_norm)
            put_norm(f"{prefix}.output.LayerNorm", block.ffn_norm)
    if pre:
        put_norm("bert.encoder.ln", encoder.get_layer("final_norm"))
    put_dense("cls.predictions.transform.dense", head.transform, hidden, hidden)
    put_norm("cls.predictions.transform.LayerNorm", head.norm)
    put("cls.predictions.bias", encoder.token_embedding.output_bias.numpy(), (config.vocab_size,))
    return out


def tokenizer_files(max_seq_len: int) -> dict[str, dict]:
    """tokenizer_config.json and special_tokens_map.json: a lower-casing WordPiece BertTokenizer, our
    reserved tokens, inputs up to `max_seq_len` pieces ([CLS] and [SEP] included)."""
    special = {"unk_token": vocab.UNK, "sep_token": vocab.SEP, "pad_token": vocab.PAD, "cls_token": vocab.CLS,
               "mask_token": vocab.MASK}
    return {"tokenizer_config.json": {"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                                      "tokenize_chinese_chars": True, "strip_accents": None,
                                      "model_max_length": max_seq_len, **special},
            "special_tokens_map.json": special}


def write(folder: str, masked_lm, run_config: dict, vocab_file: str) -> None:
    """The transformers model folder of `masked_lm` (a run's model) in `folder`, which must exist."""
    from safetensors.numpy import save_file

    save_file(tensors(masked_lm), os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    tokens = vocab.read_vocabulary(vocab_file)
    files = {"config.json": hf_config(run_config, len(tokens)), **tokenizer_files(run_config["max_seq_len"])}
    for name, value in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as out:
            json.dump(value, out, indent=2)
            out.write("\n")
    shutil.copy(vocab_file, os.path.join(folder, "vocab.txt"))
