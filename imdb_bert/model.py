"""A BERT encoder, and the masked-language-model head put on it, as Keras 3 layers and models.

`BertEncoder(ModelConfig(...))` maps `input_ids` [batch, seq] to hidden states. `BertMaskedLM(encoder)`
takes `input_ids` and `masked_positions` [batch, predictions] and returns vocabulary logits only
at the masked positions [batch, predictions, vocab]: the output projection, by far the largest
matmul at vocab 30k, runs on ~15% of the positions. The classifier head is put on the same
encoder object (imdb_bert/classifier.py).

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

import dataclasses
from dataclasses import dataclass

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="imdb_bert")
def gelu_tanh(x):
    """GELU with the tanh approximation, as the original BERT used.

    The exact (erf) GELU gets slower on CPU once weights are trained (its tails become expensive),
    enough to slow the whole step; the approximation stays fast (docs/design.md).
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
            # was already rounded to the compute dtype by the matmul; a visible share of the head's time).
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
                 norm_position: str = "pre", activation: str = "gelu", use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.num_heads, self.ffn_size = hidden_size, num_heads, ffn_size
        self.dropout, self.norm_position, self.activation, self.use_bias = dropout, norm_position, activation, use_bias
        # Sublayers follow this block's dtype policy (not the global one), so a model trained in
        # mixed precision reloads in a process that never set a policy.
        policy = self.dtype_policy
        self.attention = layers.MultiHeadAttention(num_heads, key_dim=hidden_size // num_heads, dropout=dropout,
                                                   use_bias=use_bias, name="attention", dtype=policy)
        self.attention_norm = layers.LayerNormalization(epsilon=1e-6, center=use_bias, name="attention_norm",
                                                        dtype=policy)
        self.ffn_in = layers.Dense(ffn_size, activation=ACTIVATIONS[activation], use_bias=use_bias, name="ffn_in",
                                   dtype=policy)
        self.ffn_out = layers.Dense(hidden_size, use_bias=use_bias, name="ffn_out", dtype=policy)
        self.ffn_norm = layers.LayerNormalization(epsilon=1e-6, center=use_bias, name="ffn_norm", dtype=policy)
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
                "activation": self.activation, "use_bias": self.use_bias}


@keras.saving.register_keras_serializable(package="imdb_bert")
class GatherPositions(layers.Layer):
    """Hidden states at the given positions: [batch, seq, hidden] x [batch, k] -> [batch, k, hidden]."""

    def call(self, hidden, positions):
        index = ops.expand_dims(ops.cast(positions, "int32"), -1)
        return ops.take_along_axis(hidden, index, axis=1)

    def compute_output_shape(self, hidden_shape, positions_shape):
        return tuple(positions_shape) + (hidden_shape[-1],)


@dataclass(frozen=True)
class ModelConfig:
    """The shape of the encoder (and of the masked-LM head on it). The pipeline's presets hold the
    values (config.py); `pipeline.settings(ModelConfig, config, vocab_size=...)` takes them from there."""
    vocab_size: int
    max_seq_len: int                  # positions, [CLS] and [SEP] included
    hidden_size: int
    num_heads: int
    ffn_size: int
    num_layers: int
    dropout: float
    norm_position: str                # pre | post
    activation: str                   # gelu | relu
    tie_embeddings: bool              # the masked-LM head scores against the token embedding table
    use_bias: bool = True             # biases in the encoder's dense layers and layer norms (runs saved before it had them)


@keras.saving.register_keras_serializable(package="imdb_bert")
class BertEncoder(keras.Model):
    """input_ids [batch, seq] -> hidden states [batch, seq, hidden]: embeddings and transformer blocks.

    `token_embedding` is the table a masked-LM head scores against; heads are put on the encoder
    (`BertMaskedLM`, `classifier.SentimentClassifier`), so fine-tuning takes the encoder object.
    """

    def __init__(self, config: ModelConfig | dict, dtype=None, **kwargs):
        config = config if isinstance(config, ModelConfig) else ModelConfig(**config)
        # Every layer takes the policy the encoder was built under (or is given when it is reloaded),
        # so a model trained in mixed precision reloads as it was in a process that set no policy.
        policy = keras.dtype_policies.get(dtype) if dtype is not None else keras.config.dtype_policy()
        input_ids = keras.Input(shape=(None,), dtype="int32", name="input_ids")
        padding_mask = PaddingMask(name="padding_mask", dtype=policy)(input_ids)
        token_embedding = TiedTokenEmbedding(config.vocab_size, config.hidden_size, name="token_embedding", dtype=policy)
        position_embedding = PositionEmbedding(config.max_seq_len, name="position_embedding", dtype=policy)
        x = position_embedding(token_embedding(input_ids))
        if config.norm_position == "post":
            x = layers.LayerNormalization(epsilon=1e-6, center=config.use_bias, name="embedding_norm", dtype=policy)(x)
        x = layers.Dropout(config.dropout, name="embedding_dropout", dtype=policy)(x)
        for index in range(config.num_layers):
            x = TransformerBlock(config.hidden_size, config.num_heads, config.ffn_size, config.dropout,
                                 config.norm_position, config.activation, config.use_bias, name=f"block_{index}",
                                 dtype=policy)(x, padding_mask)
        if config.norm_position == "pre":
            x = layers.LayerNormalization(epsilon=1e-6, center=config.use_bias, name="final_norm", dtype=policy)(x)
        super().__init__(input_ids, x, **{"name": "encoder", **kwargs})
        self.config, self.token_embedding, self.position_embedding = config, token_embedding, position_embedding
        self.layer_policy = policy

    def get_config(self):
        return {"name": self.name, "config": dataclasses.asdict(self.config), "dtype": self.layer_policy.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def embedding_tables(self) -> list:
        """The token and position embedding tables (optimizers leave them out of weight decay)."""
        return [self.token_embedding.embeddings, self.position_embedding.positions]


@keras.saving.register_keras_serializable(package="imdb_bert")
class MaskedLMHead(layers.Layer):
    """BERT's prediction head: hidden states at the masked positions -> vocabulary logits.

    Gathers the positions, transforms and normalises, then scores against `token_embedding`
    (the encoder's table, shared, not copied) or, untied, its own output layer.
    """

    def __init__(self, config: ModelConfig | dict, token_embedding: TiedTokenEmbedding | None = None, **kwargs):
        super().__init__(**kwargs)
        self.config = config if isinstance(config, ModelConfig) else ModelConfig(**config)
        policy = self.dtype_policy
        self.gather = GatherPositions(name="gather_masked", dtype=policy)
        self.transform = layers.Dense(self.config.hidden_size, activation=ACTIVATIONS[self.config.activation],
                                      name="mlm_transform", dtype=policy)
        self.norm = layers.LayerNormalization(epsilon=1e-6, name="mlm_norm", dtype=policy)
        self.token_embedding = token_embedding if self.config.tie_embeddings else None
        self.output_layer = None if self.config.tie_embeddings else layers.Dense(
            self.config.vocab_size, name="mlm_output", dtype="float32")

    def build(self, hidden_shape, positions_shape):
        gathered = tuple(positions_shape) + (hidden_shape[-1],)
        transformed = tuple(positions_shape) + (self.config.hidden_size,)
        self.transform.build(gathered)
        self.norm.build(transformed)
        if self.output_layer is not None:
            self.output_layer.build(transformed)

    def call(self, hidden, positions):
        x = self.norm(self.transform(self.gather(hidden, positions)))
        if self.token_embedding is not None:
            return self.token_embedding(x, reverse=True)
        return self.output_layer(x)

    def compute_output_shape(self, hidden_shape, positions_shape):
        return tuple(positions_shape) + (self.config.vocab_size,)

    def get_config(self):
        # The shared table is the encoder's; BertMaskedLM hands it over again when it is rebuilt.
        return {**super().get_config(), "config": dataclasses.asdict(self.config)}


@keras.saving.register_keras_serializable(package="imdb_bert")
class BertMaskedLM(keras.Model):
    """{"input_ids" [batch, seq], "masked_positions" [batch, k]} -> logits [batch, k, vocab] at the
    masked positions only: the encoder with the masked-LM head put on it."""

    def __init__(self, encoder: BertEncoder, **kwargs):
        input_ids = keras.Input(shape=(None,), dtype="int32", name="input_ids")
        masked_positions = keras.Input(shape=(None,), dtype="int32", name="masked_positions")
        head = MaskedLMHead(encoder.config, encoder.token_embedding, name="mlm_head", dtype=encoder.layer_policy)
        logits = head(encoder(input_ids), masked_positions)
        super().__init__({"input_ids": input_ids, "masked_positions": masked_positions}, logits,
                         **{"name": "bert_masked_lm", **kwargs})
        self.encoder, self.head = encoder, head

    def get_config(self):
        return {"name": self.name, "encoder": keras.saving.serialize_keras_object(self.encoder)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(keras.saving.deserialize_keras_object(config.pop("encoder")), **config)


def build_masked_lm(config: ModelConfig) -> BertMaskedLM:
    """A new encoder of shape `config` with the masked-LM head on it."""
    return BertMaskedLM(BertEncoder(config))
