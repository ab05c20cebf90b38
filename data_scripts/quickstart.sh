#!/usr/bin/env bash
# One command from a fresh clone to the running app:
#   install -> get images -> extract features -> build the index -> open the app (Voila, http://localhost:8866).
#
# Usage: bash data_scripts/quickstart.sh [--images DIR_OR_LIST] [--model NAME] [--weights W]
#                                        [--db DIR] [--app voila|lab|notebook|none] [--backend B] [--precision P]
# Defaults: download MS-COCO val2014 (6.2 GB) into data/coco, model vgg16-fc2 with
# Keras' ImageNet weights, database data/coco-db, open the app alone with Voila.
# Every step is resumable and skipped when already done, so re-running is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGES=""; MODEL="vgg16-fc2"; WEIGHTS="imagenet"; DB="data/coco-db"; APP="voila"; BACKEND=""; PRECISION=""
while [ $# -gt 0 ]; do
  case "$1" in
    --images) IMAGES="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --weights) WEIGHTS="$2"; shift 2 ;;
    --db) DB="$2"; shift 2 ;;
    --app) APP="$2"; shift 2 ;;
    --backend) BACKEND="$2"; shift 2 ;;
    --precision) PRECISION="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

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

if [ -z "$IMAGES" ]; then
  echo "==> Downloading MS-COCO 2014 validation images into data/coco"
  IMAGES="$(bash data_scripts/get_ms_coco_dataset.sh data/coco | tail -n 1)"
fi

if [ -f "$DB/manifest.json" ]; then
  echo "==> Database $DB exists; skipping extraction"
else
  echo "==> Extracting $MODEL features of $IMAGES into $DB (resumes if interrupted)"
  similar-images extract "$IMAGES" "$DB" --model "$MODEL" --weights "$WEIGHTS" \
    ${BACKEND:+--backend "$BACKEND"} ${PRECISION:+--precision "$PRECISION"}
fi
if similar-images info "$DB" | grep -q "index: none"; then
  echo "==> Building the index"
  similar-images build-index "$DB"
fi
similar-images info "$DB"

export SIMILAR_IMAGES_DB="$(cd "$DB" && pwd)"
case "$APP" in
  lab) echo "==> JupyterLab: in the notebook, Run > Run All Cells (the app appears under the last cell)"
       exec jupyter lab notebooks/similar_images.ipynb ;;
  notebook) echo "==> Notebook 7: Run > Run All Cells (the app appears under the last cell)"
            exec jupyter notebook notebooks/similar_images.ipynb ;;
  voila) echo "==> The app: open http://localhost:8866 in a browser (Ctrl+C here stops it)"
         exec voila notebooks/similar_images.ipynb ;;
  none) echo "Done. Open notebooks/similar_images.ipynb with SIMILAR_IMAGES_DB=$SIMILAR_IMAGES_DB" ;;
  *) echo "unknown --app $APP" >&2; exit 2 ;;
esac
