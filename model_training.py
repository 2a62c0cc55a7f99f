"""Stage 4: train the BERT masked-language model and save a run folder.

    python model_training.py [--preset P] [--set epochs=3] [--set run_name=try1] [--force]

Reads <data_dir>/prepared and <data_dir>/vocab/vocab.txt; trains in <run_dir>.inprogress/ and, when
done, writes <runs_dir>/<run_name or preset>/ with model.keras (last epoch), best.keras (best
dev-split loss), vocab.txt, config.json, history.csv, metrics.json, logs/ (TensorBoard), curves.png,
fill_mask_export/ (a SavedModel that fills [MASK]s in raw strings; serve it with predict.py) and
manifest.json. After each epoch it prints the top-k fills of the probe phrases; metrics count
masked positions only.

With train_minutes > 0 (the cpu preset) the whole stage, final evaluation and exports included, takes
that many minutes. A killed run resumes from its last checkpoint (every epoch, and every
checkpoint_every_steps steps or checkpoint_every_minutes of a time-limited run) when rerun with the
same config. A finished run with the same config and inputs is not redone.
"""

import json

import config as config_module
from imdb_bert import distribute, pipeline


def main():
    config, options = config_module.load_stage_config(__doc__)
    config = distribute.worker_config(config)
    identity = pipeline.training_identity(config)
    if pipeline.skip_if_up_to_date("model_training", config.run_dir, identity, options.force, config):
        return
    from imdb_bert import pretraining, report  # TensorFlow only once there is training to do

    run = pretraining.start(config, identity, options.force, config_module.PRESET_VOCAB_SIZES)
    pretraining.build(run)
    pretraining.fit(run)
    metrics = pretraining.evaluate(run, config_module.PRESET_VOCAB_SIZES)
    pretraining.publish(run, metrics, report.read_references(config_module.REFERENCES_CSV))

    print(f"model_training: validation masked-token accuracy {metrics['validation_masked_accuracy']:.4f}, "
          f"perplexity {metrics['validation_perplexity']:.1f} (masked positions only, held-out reviews, fixed protocol); "
          f"word-level cloze top-1 {metrics['cloze_top1']:.4f}, top-5 {metrics['cloze_top5']:.4f}")
    print(f"model_training: all-positions token accuracy {metrics['all_positions_accuracy_original_style']:.4f} "
          "— the original's metric, which counts unmasked tokens the model can copy; for comparison only")
    top = metrics["probe"][0]
    print(f"model_training: probe top-1 {top['predicted mask token']!r} p={top['probability']:.3f}; "
          f"{metrics['epochs']} epochs, {metrics['optimizer_steps']} steps, best epoch {metrics['best_epoch']} "
          f"-> {config.run_dir} (read {config.run_dir}/report.md first)")
    if run.budget:
        figures = run.budget.figures()
        took = run.budget.clock()
        print(f"model_training: the stage took {took:.0f}s of its {figures['budget_seconds']:.0f}s budget; steps "
              f"stopped at {figures['steps_stopped_at_seconds']:.0f}s, reckoning {figures['reserved_seconds']:.0f}s for "
              f"the last epoch's end, the final evaluation and the exports, which took "
              f"{took - figures['steps_stopped_at_seconds']:.0f}s")
        if metrics["optimizer_steps"] < config.warmup_steps:
            print(f"model_training: warning: train_minutes={config.train_minutes:g} left time for only "
                  f"{metrics['optimizer_steps']} steps, fewer than the {config.warmup_steps} of the warm-up: raise it")
    print(json.dumps({key: value for key, value in metrics.items() if key != "probe"}))


if __name__ == "__main__":
    pipeline.run_stage(main)
