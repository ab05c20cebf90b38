#!/usr/bin/env bash
# Download the MS-COCO 2014 validation photos (6.2 GB, 40,504 images), check
# the archive, extract it and write the image file list.
#
# Usage: data_scripts/get_ms_coco_dataset.sh DEST [--url URL] [other download-coco options]
#
# A thin wrapper around `similar-images download-coco`; see
# `similar-images download-coco --help`. Set PYTHON to choose the interpreter
# that has the similar_images package installed.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "Usage: $0 DEST [--url URL] [--timeout S] [--quiet]" >&2
    echo "Downloads the MS-COCO 2014 validation images into DEST (resumable, checked, idempotent)." >&2
    exit 2
fi

if [[ -n "${PYTHON:-}" ]]; then
    exec "$PYTHON" -c 'import sys; from similar_images.cli import main; sys.exit(main(prog_name="similar-images"))' \
        download-coco "$@"
elif command -v similar-images >/dev/null 2>&1; then
    exec similar-images download-coco "$@"
else
    exec python3 -c 'import sys; from similar_images.cli import main; sys.exit(main(prog_name="similar-images"))' \
        download-coco "$@"
fi
