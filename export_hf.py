"""Write a trained run as a Hugging Face `transformers` model folder (needs no torch to write).

    python export_hf.py [--run runs/cpu] [--out DIR] [--force]

Writes <run_dir>/hf/ (or --out): config.json, model.safetensors, vocab.txt, tokenizer_config.json,
special_tokens_map.json and manifest.json. `transformers` loads it with no code of ours:

    from transformers import pipeline
    fill = pipeline("fill-mask", model="runs/cpu/hf")
    fill("i have watched this [MASK] and it was awesome")

A pre-LN run (the cpu preset) loads as MegatronBertForMaskedLM, a post-LN one (gpu) as BertForMaskedLM;
imdb_bert/hf_export.py maps the weights. The folder is written whole or not at all; an existing one
is replaced only with --force.
"""

import argparse
import json
import os

import config as config_module
from imdb_bert import artifacts, hf_export, pipeline


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run folder (default: the config's run folder)")
    parser.add_argument("--out", help="where to write the model folder (default: <run>/hf)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    config_module.add_config_arguments(parser)
    args = parser.parse_args()
    run_dir = args.run or config_module.config_from_args(args).run_dir
    manifest = pipeline.read_run(run_dir, config_module.Config, " (or pass --run FOLDER)")
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as handle:
        run_config = json.load(handle)
    reason = hf_export.unsupported(run_config)
    if reason:
        raise artifacts.StageError(f"{run_dir} cannot be exported to transformers: {reason}")
    out = args.out or os.path.join(run_dir, "hf")
    if os.path.exists(out) and not args.force:
        raise artifacts.StageError(f"{out} already exists: add --force to replace it, or pass --out DIR")
    try:
        import safetensors  # noqa: F401
    except ImportError:
        raise artifacts.StageError("export_hf.py needs the safetensors package: pip install -r requirements.txt") from None
    from imdb_bert import probe

    model = probe.load_model(os.path.join(run_dir, "model.keras"))
    with artifacts.atomic_dir(out) as work:
        hf_export.write(work, model, run_config, os.path.join(run_dir, "vocab.txt"))
        artifacts.write_manifest(work, "export_hf", {"config": {}, "inputs": {"run": manifest["fingerprint"]}})
    architecture = hf_export.ARCHITECTURES[run_config["norm_position"]][1]
    print(f"export_hf: {run_dir} -> {out} ({architecture}); load it with "
          f"transformers.pipeline(\"fill-mask\", model={out!r})")


if __name__ == "__main__":
    pipeline.run_stage(main)
