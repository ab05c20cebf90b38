#!/usr/bin/env python3
"""Download Sentiment140 (1.6 million tweets) and sample N of them into a CSV file.

Usage: python data_scripts/get_sentiment140.py DEST.csv [-n 20000] [--seed 0] [--archive ZIP_OR_CSV] [--quiet]

A thin wrapper around `similar-images text get-sentiment140` (see its --help):
downloads https://cs.stanford.edu/people/alecmgo/trainingandtestdata.zip next
to DEST (resumable, CRC-checked), reads training.1600000.processed.noemoticon.csv
(latin-1, no header: target, id, date, flag, user, text) and writes a
reproducible random sample with the columns text, target, id.

Without network access it fails within seconds; build from a local CSV instead:
    similar-images text build ../shared/assets/text/texts_20k.csv DB
"""

import sys

from similar_images.cli import main

if __name__ == "__main__":
    sys.exit(main(["text", "get-sentiment140", *sys.argv[1:]], prog_name="get_sentiment140.py"))
