"""Every knob of the pipeline, in one dataclass, with presets and command-line overrides.

All four stages (and fill_mask.py) call `load_config()`, so they agree on paths and sizes:

    python model_training.py --preset tiny --set epochs=3 --set learning_rate=1e-3

The dataclass defaults are the `cpu` preset, the default when no GPU is visible (all four stages
in under 20 minutes on a 2-core CPU). The other presets override:
  gpu   the original project's hyperparameters (vocab 30000, 256-token windows, batch 32,
        hidden 256, 4 heads, FFN 512, 4 layers, 10 epochs, Transformer warm-up), dropout 0.
  tiny  for tests: a few hundred reviews, a few seconds per stage.
`python config.py --preset NAME` prints every value of a preset.

The preset can also come from the IMDB_BERT_PRESET environment variable; `--preset` wins.
This module imports nothing of ours and not TensorFlow, so a stage can decide it has nothing to
do (its output is up to date) in a fraction of a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from imdb_bert import pipeline


def key(default, stage: str | None = "training", upgrade: Any = pipeline.NOT_ADDED):
    """A config key, declared once: its default (the `cpu` preset's value), the first stage whose
    output it changes (data_prep, vocab, training, classifier; None for where files go, how often to
    checkpoint, what to print and which devices share the work, which change no output), and for a
    key added after runs were made, `upgrade`: the value that reproduces what those runs did, so a
    manifest without the key counts as built with it."""
    return field(default=default, metadata={"stage": stage, "upgrade": upgrade})


class ConfigError(ValueError):
    """A config value or key that cannot work; stages print it as one line."""

    user_error = True


@dataclass(frozen=True)
class Config:
    # Keys that are gone, each with the value every output still current had: a run or classifier
    # made with another one (ELECTRA pretraining, a [CLS]-pooled classifier) is stale.
    RETIRED_KEYS: ClassVar[dict] = {"objective": "mlm", "classifier_pooling": "mean", "classifier_layer_decay": 1.0,
                                    "classifier_encoder_rate": 1.0}

    preset: str = key("cpu", None)

    # Where stage outputs go (relative paths are relative to the current directory); none of these
    # changes what a stage makes.
    data_dir: str = key("data", None)         # raw/, prepared/, vocab/ live here
    runs_dir: str = key("runs", None)         # one folder per training run
    run_name: str = key("", None)             # empty: the preset's name

    # Stage 2: cleaning and splitting.
    source: str = key("auto", "data_prep")    # auto | official | package | tfds
    validation_fraction: float = key(0.1, "data_prep")   # held-out reviews: scored for the final figures only
    dev_fraction: float = key(0.1, "data_prep")   # reviews carved from the training side for choices (the
                                              # epoch of fine-tuning, per-epoch validation, a recipe
                                              # study), never trained on
    split_seed: int = key(1234, "data_prep")
    num_shards: int = key(4, "data_prep")

    # Stage 3: WordPiece vocabulary.
    vocab_size: int = key(8000, "vocab")
    vocab_min_word_count: int = key(2, "vocab")   # words seen fewer times cannot earn a vocab entry

    # Stage 4: model shape.
    max_seq_len: int = key(64)                # tokens per window, [CLS] and [SEP] included
    hidden_size: int = key(128)
    num_heads: int = key(4)
    ffn_size: int = key(512)
    num_layers: int = key(2)
    dropout: float = key(0.0)
    norm_position: str = key("pre")           # pre | post (layer norm before or after each sublayer)
    activation: str = key("gelu")             # gelu (tanh approximation, as BERT) | relu (as the original)
    tie_embeddings: bool = key(True)
    use_bias: bool = key(True)                # biases in the encoder's dense layers and layer norms
    embedding_init: str = key("random", upgrade="random")   # random | ppmi_svd: the token table starts from
                                              # co-occurrence counts of the training windows
                                              # (imdb_bert/count_embeddings.py), the rest random

    # Stage 4: masking.
    mask_rate: float = key(0.3)               # share of a window's word pieces the model must predict
    mask_token_rate: float = key(0.8)         # of those: shown as [MASK]
    random_token_rate: float = key(0.1)       # of those: a random word piece (the rest are shown unchanged)
    whole_word_masking: bool = key(False)     # select whole words (all their word pieces), not single pieces

    # Stage 4: optimisation.
    batch_size: int = key(32)                 # windows per optimizer step (the global batch on several devices)
    epochs: int = key(6)                      # with train_minutes=0: epochs x steps_per_epoch steps
    train_minutes: float = key(15.0)          # > 0: the whole training stage (steps, validation, probes,
                                              # checkpoints, final evaluation, exports) takes this many
                                              # minutes, and the learning rate decays over the time, so a
                                              # faster machine makes more steps; epochs x steps_per_epoch
                                              # only caps them
    short_seq_len: int = key(0)               # > 0 (needs train_minutes): windows of this many tokens for the
    short_seq_share: float = key(0.9)         # first short_seq_share of the time, then max_seq_len (BERT
                                              # pretrained 90% of its steps at 128 tokens, then 512)
    steps_per_epoch: int = key(500)           # 0: one full pass over the training windows
    dev_batches: int = key(30)                # per-epoch validation on the first dev_batches x batch_size dev
                                              # windows (0: all); the final figures read the held-out split
    learning_rate: float = key(1.41e-3)       # the peak, reached after warm-up, in every schedule
    lr_schedule: str = key("linear")          # cosine | linear (warm-up, then that decay to zero) | transformer
    warmup_steps: int = key(300)              # steps of linear warm-up to the peak
    weight_decay: float = key(0.01)           # AdamW's decoupled decay (not on biases, norms, embedding tables)
    mixed_precision: str = key("auto")        # auto | float32 | mixed_bfloat16 | mixed_float16; auto picks by
                                              # the device (training.precision_for): bf16 on GPUs >= 8.0 and
                                              # CPUs with native bf16, float16 on GPUs 7.x, else float32
    jit_compile: bool = key(False)            # XLA
    steps_per_execution: int = key(1, upgrade=1)   # optimizer steps per call into the compiled train step
                                              # (Keras); callbacks then act once per call; must divide
                                              # steps_per_epoch
    strategy: str = key("auto", None)         # auto | mirrored | multi_worker | tpu (imdb_bert/distribute.py);
                                              # batch_size is the global batch, split across the replicas
    seed: int = key(42)
    checkpoint_every_steps: int = key(200, None)   # besides every epoch end; a killed run resumes from the last
    checkpoint_every_minutes: float = key(2.0, None)   # the same by the clock, for a time-limited run

    # Stage 5 (optional): sentiment fine-tuning of the pretrained encoder (classifier_training.py).
    classifier_epochs: int = key(1, "classifier")   # passes over the labelled reviews; the best on dev is kept
    classifier_learning_rate: float = key(5e-4, "classifier")   # peak; 10% linear warm-up, then cosine decay
    classifier_max_windows: int = key(8, "classifier")   # a review is read as up to this many max_seq_len windows
    classifier_windows: str = key("head", "classifier")   # which of a longer review's windows: head (its first
                                              # ones) | head_tail (half from its start, half from its end)
    classifier_probe_first: bool = key(False, "classifier", upgrade=False)   # start from a head fitted as a
                                              # logistic regression on the frozen encoder's pooled features
                                              # (LP-FT), not from a random one
    classifier_dropout: float = key(0.1, "classifier")   # on the pooled review vector before the logit
    classifier_weight_decay: float = key(0.01, "classifier", upgrade=0.01)   # AdamW's, while fine-tuning

    # Probing after each epoch.
    probe_phrases: tuple = key(("i have watched this [MASK] and it was awesome",), None)
    top_k: int = key(5, None)

    @property
    def run_dir(self) -> str:
        return os.path.join(self.runs_dir, self.run_name or self.preset)

    def validate(self) -> None:
        """Raise ValueError naming the first value that cannot work."""
        positive = ["num_shards", "vocab_size", "max_seq_len", "hidden_size", "num_heads",
                    "ffn_size", "num_layers", "batch_size", "epochs", "top_k", "classifier_epochs",
                    "classifier_max_windows", "classifier_learning_rate"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ["validation_fraction", "dev_fraction", "mask_rate"]:
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be between 0 and 1 (exclusive), got {getattr(self, name)}")
        for name in ["dropout", "mask_token_rate", "random_token_rate", "weight_decay", "classifier_dropout",
                     "classifier_weight_decay"]:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.validation_fraction + self.dev_fraction >= 1.0:
            raise ConfigError("validation_fraction + dev_fraction must leave reviews to train on (sum below 1)")
        if self.mask_token_rate + self.random_token_rate > 1.0:
            raise ConfigError("mask_token_rate + random_token_rate must not exceed 1")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})")
        if self.max_seq_len < 8:
            raise ConfigError(f"max_seq_len must be at least 8, got {self.max_seq_len}")
        if self.vocab_size < 100:
            raise ConfigError(f"vocab_size must be at least 100, got {self.vocab_size}")
        if self.train_minutes and self.lr_schedule == "transformer":
            raise ConfigError("train_minutes needs lr_schedule cosine or linear (the transformer schedule has no end)")
        for name in ["steps_per_epoch", "dev_batches", "warmup_steps", "checkpoint_every_steps",
                     "checkpoint_every_minutes", "train_minutes"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.short_seq_len and not (8 <= self.short_seq_len < self.max_seq_len and self.train_minutes
                                       and 0.0 < self.short_seq_share < 1.0):
            raise ConfigError(f"short_seq_len {self.short_seq_len} needs 8 <= short_seq_len < max_seq_len "
                              f"({self.max_seq_len}), train_minutes > 0 and 0 < short_seq_share < 1")
        if self.steps_per_execution < 1 or (self.steps_per_epoch and self.steps_per_epoch % self.steps_per_execution):
            raise ConfigError(f"steps_per_execution must be a positive divisor of steps_per_epoch "
                              f"({self.steps_per_epoch}), got {self.steps_per_execution}")
        if self.embedding_init == "ppmi_svd" and self.hidden_size >= self.vocab_size:
            raise ConfigError(f"embedding_init ppmi_svd needs hidden_size ({self.hidden_size}) below vocab_size "
                              f"({self.vocab_size}): the SVD has no more components than pieces")
        if self.vocab_min_word_count < 1:
            raise ConfigError(f"vocab_min_word_count must be >= 1, got {self.vocab_min_word_count}")
        choices = {"source": ("auto", "official", "package", "tfds"),
                   "norm_position": ("pre", "post"),
                   "activation": ("gelu", "relu"),
                   "embedding_init": ("random", "ppmi_svd"),
                   "lr_schedule": ("cosine", "linear", "transformer"),
                   "mixed_precision": ("auto", "float32", "mixed_bfloat16", "mixed_float16"),
                   "strategy": ("auto", "mirrored", "multi_worker", "tpu"),
                   "classifier_windows": ("head", "head_tail")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not self.probe_phrases:
            raise ConfigError("probe_phrases must name at least one phrase")

    def as_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["probe_phrases"] = list(self.probe_phrases)
        return values


PRESETS: dict[str, dict[str, Any]] = {
    # The dataclass defaults (docs/study.md and docs/fine-tuning.md say how they were chosen).
    "cpu": dict(),
    # The original project's shape and schedule, trained for full epochs rather than minutes; dropout 0
    # (docs/throughput.md).
    "gpu": dict(vocab_size=30000, max_seq_len=256, batch_size=32, hidden_size=256, num_heads=4,
                ffn_size=512, num_layers=4, dropout=0.0, norm_position="post", epochs=10, train_minutes=0.0,
                mask_rate=0.15,
                # The original's schedule, hidden^-0.5 * min(step^-0.5, step * 4000^-1.5), peaks at
                # 256^-0.5 * 4000^-0.5 = 9.88e-4 after 4000 steps.
                lr_schedule="transformer", warmup_steps=4000, learning_rate=256 ** -0.5 * 4000 ** -0.5, weight_decay=0.0,
                steps_per_epoch=0, dev_batches=0, classifier_epochs=3, classifier_max_windows=2,
                classifier_learning_rate=1e-4),
    # The tests: a small model, a fixed number of steps, float32 on every CPU kind (so a test run gives the
    # same figures with or without bf16, and compares with transformers, which computes in float32).
    "tiny": dict(vocab_size=1000, max_seq_len=64, hidden_size=64, num_heads=2, ffn_size=128,
                 num_layers=2, batch_size=16, epochs=3, train_minutes=0.0, warmup_steps=20, learning_rate=3e-3,
                 mask_rate=0.15, lr_schedule="cosine", mixed_precision="float32",
                 num_shards=2, validation_fraction=0.2, steps_per_epoch=30, dev_batches=0,
                 checkpoint_every_steps=10,
                 classifier_epochs=8, classifier_max_windows=2, classifier_learning_rate=3e-4),
}


# The recorded runs a run's report.md is compared with, at its preset, shape and step count.
REFERENCES_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "references.csv")
# Every vocabulary size a preset uses: the word-level cloze asks only for words that are one whole
# word piece in all of them (imdb_bert/evaluation.py), so runs of any preset answer the same questions.
PRESET_VOCAB_SIZES = sorted({values.get("vocab_size", Config.vocab_size) for values in PRESETS.values()})


def default_preset() -> str:
    """`gpu` when an NVIDIA GPU is present, else `cpu`; IMDB_BERT_PRESET overrides both.

    Looks for the driver rather than asking TensorFlow, whose import alone takes seconds.
    """
    if os.environ.get("IMDB_BERT_PRESET"):
        return os.environ["IMDB_BERT_PRESET"]
    has_gpu = os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None
    return "gpu" if has_gpu else "cpu"


def _parse_value(name: str, text: str, current: Any) -> Any:
    """Turn the text of `--set name=text` into the type the field already has."""
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} takes true or false, got {text!r}")
    if isinstance(current, tuple):
        return tuple(part.strip() for part in text.split("|") if part.strip())
    for kind in (int, float, str):
        if isinstance(current, kind):
            try:
                return kind(text)
            except ValueError:
                raise ConfigError(f"{name} takes a{'n' if kind is int else ''} {kind.__name__}, got {text!r}") from None
    raise ConfigError(f"cannot set {name}")


def make_config(preset: str, overrides: dict[str, str] | None = None) -> Config:
    """Build and validate the config of a preset with `name -> text` overrides applied."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS[preset], preset=preset)
    defaults = {f.name: f.default for f in fields(Config)}
    for name, text in (overrides or {}).items():
        if name in pipeline.RENAMED_KEYS:   # the old name still works, with a one-line note
            print(f"config: {name} is now called {pipeline.RENAMED_KEYS[name]}; the old name will go", file=sys.stderr)
            name = pipeline.RENAMED_KEYS[name]
        if name not in defaults or name == "preset":
            raise ConfigError(f"unknown config key {name!r} (see config.py for the keys)")
        values[name] = _parse_value(name, text, values.get(name, defaults[name]))
    config = Config(**values)
    config.validate()
    return config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)} "
                        "(default: $IMDB_BERT_PRESET, else gpu when a GPU is visible, else cpu)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value for this run (repeatable); "
                             "probe_phrases takes phrases separated by |")


def config_from_args(args: argparse.Namespace) -> Config:
    """The config named by parsed `--preset` / `--set` arguments; ValueError if they are wrong."""
    overrides = {}
    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        name, text = item.split("=", 1)
        overrides[name.strip()] = text.strip()
    return make_config(args.preset or default_preset(), overrides)


def load_stage_config(description: str, shorthands: tuple[str, ...] = (), flags: dict[str, str] | None = None,
                      options: dict[str, tuple[str, str]] | None = None) -> tuple[Config, argparse.Namespace]:
    """Parse a stage's `--preset` / `--set` / `--force` arguments, print the values it will use,
    and return them with the parsed options (`options.force`: redo the stage even if its output
    is up to date).

    Each name in `shorthands` also gets its own flag: `--source tfds` means `--set source=tfds`.
    `flags` maps extra on/off options of the stage (`compare-scratch`) to their help, `options` extra
    options that take a value (`labels`) to their help and default.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--force", action="store_true", help="redo the stage even if its output is up to date")
    for name in shorthands:
        parser.add_argument(f"--{name}", help=f"same as --set {name}=VALUE")
    for name, help_text in (flags or {}).items():
        parser.add_argument(f"--{name}", action="store_true", help=help_text)
    for name, (help_text, default) in (options or {}).items():
        parser.add_argument(f"--{name}", default=default, help=f"{help_text} (default {default})" if default else help_text)
    arguments = parser.parse_args()
    arguments.overrides += [f"{name}={getattr(arguments, name)}" for name in shorthands
                            if getattr(arguments, name) is not None]
    config = config_from_args(arguments)
    print(describe(config))
    return config, arguments


def describe(config: Config) -> str:
    """One block of text listing the preset and every value, printed by each stage."""
    lines = [f"config: preset={config.preset}"]
    lines += [f"  {name} = {value!r}" for name, value in config.as_dict().items() if name != "preset"]
    return "\n".join(lines)


if __name__ == "__main__":
    # `python config.py --get data_dir` lets download.sh read the same config as the Python stages.
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--get", metavar="KEY", help="print one value and exit")
    arguments = parser.parse_args()
    try:
        chosen = config_from_args(arguments)
    except ConfigError as error:
        sys.exit(f"config error: {error}")
    if arguments.get:
        if not hasattr(chosen, arguments.get):
            sys.exit(f"config error: unknown config key {arguments.get!r}")
        print(getattr(chosen, arguments.get))
    else:
        print(describe(chosen))
