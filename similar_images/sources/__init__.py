"""Where items come from: image folders and file lists (decoded robustly), text tables, and the COCO and
Sentiment140 downloads."""
