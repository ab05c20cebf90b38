#!/usr/bin/env python
"""Train the Faiss index of a database folder and measure its recall.

A thin wrapper over ``similar-images build-index``; all options are the same:

    python data_scripts/build_search_db.py data/coco-db
    python data_scripts/build_search_db.py data/coco-db --index OPQ16,IVF256,PQ16 --force
"""

import sys

from similar_images.cli import main

if __name__ == "__main__":
    main(["build-index", *sys.argv[1:]], prog_name="build_search_db.py")
