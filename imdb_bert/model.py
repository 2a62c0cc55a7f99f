"""A BERT encoder with a masked-language-model head, as Keras 3 layers in a functional model.

The model takes `input_ids` [batch, seq] and `masked_positions` [batch, predictions] and returns
vocabulary logits only at the masked positions [batch, predictions, vocab]: the output
projection, by far the largest matmul at vocab 30k, runs on ~15% of the positions.

Choices:
- Learned position embeddings (as BERT); attention head size is hidden_size / num_heads.
- Layer norm before each sublayer ("pre") by default: it trains stably at the high learning
  rates a short CPU budget needs, without a long warm-up. "post" (the original BERT) is kept
  for the gpu preset, which mirrors the original project.
- The output projection reuses the token embedding table (tied, the default), plus a bias:
  fewer parameters to learn from a small corpus.
- Padding (id 0) is masked out of attention, so padding a sentence does not change its fills.
Every layer's `get_config` round-trips its constructor, so `.keras` files reload in a fresh process.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="imdb_bert")
def gelu_tanh(x):
    """GELU with the tanh approximation, as the original BERT used.

    Measured here: the exact (erf) GELU gets ~35% slower on CPU once weights are trained (its tails
    become expensive), which cost the whole step 25%; the approximation stays fast.
    """
    return keras.activations.gelu(x, approximate=True)


ACTIVATIONS = {"gelu": gelu_tanh, "relu": "relu"}


@keras.saving.register_keras_serializable(package="imdb_bert")
class PaddingMask(layers.Layer):
    """True where `input_ids` holds a real token, False on padding."""

    def __init__(self, pad_id: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.pad_id = pad_id

    def call(self, input_ids):
        return ops.not_equal(input_ids, self.pad_id)

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}


@keras.saving.register_keras_serializable(package="imdb_bert")
class TiedTokenEmbedding(layers.Layer):
    """Token embedding table, also used transposed (plus a bias) to score the vocabulary.

    `layer(ids)` embeds; `layer(hidden, reverse=True)` returns vocabulary logits.
    """

    def __init__(self, vocab_size: int, hidden_size: int, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size

    def build(self, input_shape):
        self.embeddings = self.add_weight(shape=(self.vocab_size, self.hidden_size), name="embeddings",
                                          initializer=keras.initializers.TruncatedNormal(stddev=0.02))
        self.output_bias = self.add_weight(shape=(self.vocab_size,), name="output_bias", initializer="zeros")

    def call(self, inputs, reverse=False):
        if reverse:
            # Logits leave in float32 even under a mixed-precision policy: the softmax needs the range.
            # The bias is added before that cast, where oneDNN fuses it into the matmul (the sum
            # was already rounded to the compute dtype by the matmul; ~10% of the head's time).
            logits = ops.matmul(inputs, ops.transpose(ops.cast(self.embeddings, inputs.dtype)))
            return ops.cast(logits + ops.cast(self.output_bias, inputs.dtype), "float32")
        return ops.take(self.embeddings, ops.cast(inputs, "int32"), axis=0)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "hidden_size": self.hidden_size}


@keras.saving.register_keras_serializable(package="imdb_bert")
class PositionEmbedding(layers.Layer):
    """Adds a learned embedding of each position 0..seq-1 (seq <= max_seq_len)."""

    def __init__(self, max_seq_len: int, **kwargs):
        super().__init__(**kwargs)
        self.max_seq_len = max_seq_len

    def build(self, input_shape):
        self.positions = self.add_weight(shape=(self.max_seq_len, input_shape[-1]), name="positions",
                                         initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def call(self, token_embeddings):
        length = ops.shape(token_embeddings)[1]
        return token_embeddings + ops.cast(self.positions[:length], token_embeddings.dtype)

    def get_config(self):
        return {**super().get_config(), "max_seq_len": self.max_seq_len}


@keras.saving.register_keras_serializable(package="imdb_bert")
class TransformerBlock(layers.Layer):
    """Self-attention then a GELU feed-forward network, each with a residual and a layer norm."""

    def __init__(self, hidden_size: int, num_heads: int, ffn_size: int, dropout: float = 0.0,
                 norm_position: str = "pre", activation: str = "gelu", **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.num_heads, self.ffn_size = hidden_size, num_heads, ffn_size
        self.dropout, self.norm_position, self.activation = dropout, norm_position, activation
        # Sublayers follow this block's dtype policy (not the global one), so a model trained in
        # mixed precision reloads in a process that never set a policy.
        policy = self.dtype_policy
        self.attention = layers.MultiHeadAttention(num_heads, key_dim=hidden_size // num_heads,
                                                   dropout=dropout, name="attention", dtype=policy)
        self.attention_norm = layers.LayerNormalization(epsilon=1e-6, name="attention_norm", dtype=policy)
        self.ffn_in = layers.Dense(ffn_size, activation=ACTIVATIONS[activation], name="ffn_in", dtype=policy)
        self.ffn_out = layers.Dense(hidden_size, name="ffn_out", dtype=policy)
        self.ffn_norm = layers.LayerNormalization(epsilon=1e-6, name="ffn_norm", dtype=policy)
        self.residual_dropout = layers.Dropout(dropout, dtype=policy)

    def build(self, input_shape):
        self.attention.build(input_shape, input_shape)
        self.attention_norm.build(input_shape)
        self.ffn_in.build(input_shape)
        self.ffn_out.build(tuple(input_shape[:-1]) + (self.ffn_size,))
        self.ffn_norm.build(input_shape)

    def _attend(self, x, attention_mask, training):
        return self.residual_dropout(self.attention(x, x, attention_mask=attention_mask, training=training),
                                     training=training)

    def _feed_forward(self, x, training):
        return self.residual_dropout(self.ffn_out(self.ffn_in(x)), training=training)

    def call(self, x, padding_mask, training=None):
        attention_mask = ops.expand_dims(padding_mask, 1)  # [batch, 1, seq]: every query ignores padding
        if self.norm_position == "pre":
            x = x + self._attend(self.attention_norm(x), attention_mask, training)
            return x + self._feed_forward(self.ffn_norm(x), training)
        x = self.attention_norm(x + self._attend(x, attention_mask, training))
        return self.ffn_norm(x + self._feed_forward(x, training))

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size, "num_heads": self.num_heads,
                "ffn_size": self.ffn_size, "dropout": self.dropout, "norm_position": self.norm_position,
                "activation": self.activation}


@keras.saving.register_keras_serializable(package="imdb_bert")
class GatherPositions(layers.Layer):
    """Hidden states at the given positions: [batch, seq, hidden] x [batch, k] -> [batch, k, hidden]."""

    def call(self, hidden, positions):
        index = ops.expand_dims(ops.cast(positions, "int32"), -1)
        return ops.take_along_axis(hidden, index, axis=1)

    def compute_output_shape(self, hidden_shape, positions_shape):
        return tuple(positions_shape) + (hidden_shape[-1],)


def build_masked_lm(vocab_size: int, config) -> keras.Model:
    """The masked-LM model for a vocabulary size and a `Config` (shape fields only)."""
    input_ids = keras.Input(shape=(None,), dtype="int32", name="input_ids")
    masked_positions = keras.Input(shape=(None,), dtype="int32", name="masked_positions")

    padding_mask = PaddingMask(name="padding_mask")(input_ids)
    token_embedding = TiedTokenEmbedding(vocab_size, config.hidden_size, name="token_embedding")
    x = PositionEmbedding(config.max_seq_len, name="position_embedding")(token_embedding(input_ids))
    if config.norm_position == "post":
        x = layers.LayerNormalization(epsilon=1e-6, name="embedding_norm")(x)
    x = layers.Dropout(config.dropout, name="embedding_dropout")(x)
    for index in range(config.num_layers):
        x = TransformerBlock(config.hidden_size, config.num_heads, config.ffn_size, config.dropout,
                             config.norm_position, config.activation, name=f"block_{index}")(x, padding_mask)
    if config.norm_position == "pre":
        x = layers.LayerNormalization(epsilon=1e-6, name="final_norm")(x)

    # BERT's prediction head: transform, normalise, then score against the (tied) embeddings.
    x = GatherPositions(name="gather_masked")(x, masked_positions)
    x = layers.Dense(config.hidden_size, activation=ACTIVATIONS[config.activation], name="mlm_transform")(x)
    x = layers.LayerNormalization(epsilon=1e-6, name="mlm_norm")(x)
    if config.tie_embeddings:
        logits = token_embedding(x, reverse=True)
    else:
        logits = layers.Dense(vocab_size, name="mlm_output", dtype="float32")(x)
    return keras.Model({"input_ids": input_ids, "masked_positions": masked_positions}, logits,
                       name="bert_masked_lm")
