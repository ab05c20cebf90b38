#!/usr/bin/env bash
# One command from a fresh clone to the running app:
#   install -> open the app as soon as the first photos can be searched, while the download,
#   the feature extraction and the index build go on in the background.
#
# Usage: bash data_scripts/quickstart.sh [--images DIR_OR_LIST] [--url URL] [--data DIR] [--model NAME]
#                                        [--weights W] [--backend keras|openvino] [--precision auto|fp32|bf16|int8]
#                                        [--shard-size N] [--db DIR] [--app voila|lab|notebook|none] [--port N]
#                                        [--no-install]
# Defaults: download MS-COCO val2014 (6.2 GB) into --data data/coco, model vgg16-fc2 with
# Keras' ImageNet weights, database data/coco-db, open the app alone with Voila
# (port 8866, or the next free one: the address it serves on is printed).
# Photos are extracted from the archive and embedded while it downloads ('similar-images
# extract-coco'); the app opens as soon as the database can be searched, and the work goes on in
# the background, logged to DB.log (data/coco-db.log). --url (or SIMILAR_IMAGES_COCO_URL) fetches
# another COCO-style zip. --backend, --precision and --shard-size go to the extraction; --no-install
# skips the Java and pip steps (already installed). --app none waits for the whole build instead.
# Ctrl+C stops all of it; running it again resumes where it stopped (download, photos, shards).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
need() { [ $# -ge 2 ] || { echo "$1 needs a value (see --help)" >&2; exit 2; }; }

IMAGES=""; URL=""; DATA="data/coco"; MODEL="vgg16-fc2"; WEIGHTS="imagenet"; DB="data/coco-db"; APP="voila"
PORT=""; INSTALL=1
EXTRACT_OPTIONS=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --no-install) INSTALL=0; shift; continue ;;
  esac
  need "$@"
  case "$1" in
    --images) IMAGES="$2" ;;
    --url) URL="$2" ;;
    --data) DATA="$2" ;;
    --model) MODEL="$2" ;;
    --weights) WEIGHTS="$2" ;;
    --backend|--precision|--shard-size) EXTRACT_OPTIONS+=("$1" "$2") ;;
    --db) DB="$2" ;;
    --app) APP="$2" ;;
    --port) PORT="$2" ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift 2
done

# Print Voila's output, and once it says where it listens ("Voila is running at:" then the URL on the next
# line), the address to open: it moves to the next free port when the first one is taken.
announce_url() {
  local line after=""
  while IFS= read -r line; do
    printf '%s\n' "$line"
    if [ -n "$after" ] && [[ "$line" == http* ]]; then
      echo "==> The app: open $line in a browser (Ctrl+C here stops it)"
    fi
    after=""
    case "$line" in *"running at:"*) after=1 ;; esac
  done
}

if [ "$INSTALL" = 1 ]; then
  if ! command -v java >/dev/null 2>&1 && [ -z "${JAVA_HOME:-}" ]; then
    echo "==> Installing Java 17 (for the Spark engine, --engine spark)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    if command -v apt-get >/dev/null 2>&1; then
      $SUDO apt-get install -y -qq openjdk-17-jre-headless >/dev/null \
        || echo "warning: could not install openjdk-17-jre-headless; everything but --engine spark works without it" >&2
    else
      echo "warning: no apt-get: install a Java 17 runtime yourself to use --engine spark" >&2
    fi
  fi

  echo "==> Installing (torch CPU build first, then requirements, the tests' requirements and the package)"
  python -m pip install -q torch==2.13.0
  # requirements-dev.txt: what README's second command (python -m pytest -ra) needs
  python -m pip install -q -r requirements.txt -r requirements-dev.txt
  python -m pip install -q --no-deps -e .
fi

# The background work (and the app) run in process groups of their own; Ctrl+C (or SIGTERM) stops them all.
BG=""; APP_PID=""
stop_all() {
  trap - INT TERM EXIT
  local pid
  for pid in $APP_PID $BG; do
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in $APP_PID $BG; do wait "$pid" 2>/dev/null || true; done
}
trap 'stop_all; echo "==> Stopped; run the same command again to resume" >&2; exit 130' INT
trap 'stop_all; exit 143' TERM
trap stop_all EXIT
in_own_group() {  # run "$@" in the background, in a process group of its own
  if command -v setsid >/dev/null 2>&1; then setsid "$@" & else "$@" & fi
}

LOG="${DB%/}.log"
mkdir -p "$(dirname "$DB")"
if [ -n "$IMAGES" ]; then
  echo "==> Extracting $MODEL features of $IMAGES into $DB, then the index, in the background (log: $LOG)"
  in_own_group bash -c '
    db="$1"; images="$2"; shift 2
    [ -f "$db/manifest.json" ] || similar-images extract "$images" "$db" "$@"
    if similar-images info "$db" | grep -q "index: none"; then similar-images build-index "$db"; fi
  ' _ "$DB" "$IMAGES" --model "$MODEL" --weights "$WEIGHTS" ${EXTRACT_OPTIONS[@]+"${EXTRACT_OPTIONS[@]}"} \
    >>"$LOG" 2>&1 </dev/null
else
  echo "==> Downloading MS-COCO 2014 validation photos into $DATA and extracting $MODEL features into $DB while" \
       "they arrive, then the index, in the background (log: $LOG)"
  in_own_group similar-images extract-coco "$DATA" "$DB" ${URL:+--url "$URL"} --model "$MODEL" --weights "$WEIGHTS" \
    ${EXTRACT_OPTIONS[@]+"${EXTRACT_OPTIONS[@]}"} >>"$LOG" 2>&1 </dev/null
fi
BG=$!
similar-images wait "$DB" --pid "$BG" --log "$LOG"

export SIMILAR_IMAGES_DB="$(cd "$DB" && pwd)"
case "$APP" in
  lab) echo "==> JupyterLab: in the notebook, Run > Run All Cells (the app appears under the last cell)"
       in_own_group jupyter lab notebooks/similar_images.ipynb ;;
  notebook) echo "==> Notebook 7: Run > Run All Cells (the app appears under the last cell)"
            in_own_group jupyter notebook notebooks/similar_images.ipynb ;;
  voila) echo "==> Starting the app with Voila (the build goes on in the background: $LOG)"
         in_own_group voila notebooks/similar_images.ipynb ${PORT:+"--port=$PORT"} > >(announce_url) 2>&1 ;;
  none) wait "$BG" || { echo "The build failed; see $LOG" >&2; exit 1; }
        BG=""
        similar-images info "$DB"
        echo "Done. Open notebooks/similar_images.ipynb with SIMILAR_IMAGES_DB=$SIMILAR_IMAGES_DB"
        exit 0 ;;
  *) echo "unknown --app $APP" >&2; exit 2 ;;
esac
APP_PID=$!
wait "$APP_PID"
