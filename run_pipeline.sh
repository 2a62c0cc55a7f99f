#!/usr/bin/env bash
# The whole pipeline, in order: download, prepare, build the vocabulary, train.
# Arguments (--preset P, --set KEY=VALUE) are passed to every stage, so they all share one config.
set -euo pipefail
cd "$(dirname "$0")"
started=$(date +%s)
./download.sh "$@"
python3 data_prep.py "$@"
python3 tokeniser_build.py "$@"
python3 model_training.py "$@"
echo "run_pipeline: all four stages finished in $(( $(date +%s) - started ))s"
