"""Where items come from: image folders and file lists (decoded robustly), text tables, the COCO and
Sentiment140 downloads, and thumbnails of stored images."""
