#!/usr/bin/env python
"""Extract image feature vectors into a database folder.

A thin wrapper over ``similar-images extract``; all options are the same:

    python data_scripts/extract_image_vectors.py data/coco/val2014_files.txt data/coco-db
    python data_scripts/extract_image_vectors.py --help
"""

import sys

from similar_images.cli import main

if __name__ == "__main__":
    main(["extract", *sys.argv[1:]], prog_name="extract_image_vectors.py")
