"""The text encoder on torch (sentence-transformers) against ONNX Runtime: speed and agreement.

Prints, for the same tweets:

* encoding throughput in tweets/s of :class:`similar_images.embed.TextEmbedder` with ``backend="torch"``
  and ``backend="onnx"`` (length-sorted batches of ``--batch-size``), measured in ``--rounds``
  interleaved rounds (torch, onnx, torch, onnx, ...) so that a busy machine slows both alike; the
  median round of each, tweets per CPU-second beside wall clock, and the ratio onnx / torch;
* one tweet per call (how a query is encoded): median milliseconds for each backend;
* agreement of the onnx vectors with torch's: mean and minimum cosine per tweet, and the top-10
  neighbour agreement within the sample (exact cosine), as ``auto`` measures image precisions.

Usage::

    python benchmarks/bench_text_backends.py                     # 2,000 tweets, 3 rounds
    python benchmarks/bench_text_backends.py --n 5000 --rounds 5

The tweets are the 20,000 offline ones (``../shared/assets/text/texts_20k.csv``, or ``--csv``); the ONNX
model is exported once into the model cache (``$SIMILAR_IMAGES_CACHE``), outside the clock.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("SIMILAR_IMAGES_ASSETS", ROOT.parent / "shared" / "assets"))
DEFAULT_CSV = ASSETS / "text" / "texts_20k.csv"


def _read(path: Path, n: int, offset: int = 0) -> list[str]:
    with open(path, encoding="utf-8", newline="") as fh:
        texts = [r["text"] for r in csv.DictReader(fh) if r["text"].strip()]
    return texts[offset:offset + n]


def _clock(fn) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--n", type=int, default=2000, help="tweets per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--single", type=int, default=100, help="tweets encoded one per call")
    args = parser.parse_args()

    from similar_images.embed import TextEmbedder
    from similar_images.embed.backends import cosine_to_reference, topk_agreement

    texts = _read(args.csv, args.n)
    queries = _read(args.csv, args.single, offset=args.n)
    embedders = {b: TextEmbedder(batch_size=args.batch_size, backend=b) for b in ("torch", "onnx")}
    for b, emb in embedders.items():  # load (and export) outside the clock, and warm up
        _, seconds = _clock(emb.warm_up)
        emb.embed(texts[:args.batch_size])
        print(f"{b:6s} loaded in {seconds:.1f} s")
    print(f"{len(texts)} tweets, batches of {args.batch_size}, {args.rounds} interleaved rounds, "
          f"{os.cpu_count()} CPUs")

    wall: dict[str, list[float]] = {b: [] for b in embedders}
    cpu: dict[str, list[float]] = {b: [] for b in embedders}
    vectors: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for b, emb in embedders.items():
            w, c = _clock(lambda emb=emb, b=b: vectors.__setitem__(b, emb.embed(texts)))
            wall[b].append(len(texts) / w)
            cpu[b].append(len(texts) / c)
            print(f"  round {r + 1}: {b:6s} {len(texts) / w:7.1f} tweets/s ({len(texts) / c:6.1f} per CPU-s)")
    med = {b: statistics.median(v) for b, v in wall.items()}
    med_cpu = {b: statistics.median(v) for b, v in cpu.items()}
    for b in embedders:
        print(f"{b:6s} median {med[b]:7.1f} tweets/s   {med_cpu[b]:6.1f} tweets per CPU-s")
    print(f"onnx / torch: {med['onnx'] / med['torch']:.2f}x wall, {med_cpu['onnx'] / med_cpu['torch']:.2f}x per CPU-s")

    single: dict[str, float] = {}
    for b, emb in embedders.items():
        ms = []
        for q in queries:
            t0 = time.perf_counter()
            emb.embed([q])
            ms.append((time.perf_counter() - t0) * 1000)
        single[b] = statistics.median(ms)
    print(f"one tweet per call (a query): torch {single['torch']:.2f} ms, onnx {single['onnx']:.2f} ms median "
          f"({single['torch'] / single['onnx']:.2f}x)")

    mean, minimum = cosine_to_reference(vectors["torch"], vectors["onnx"])
    agreement = topk_agreement(vectors["torch"], vectors["onnx"], k=10)
    print(f"agreement with torch on {len(texts)} tweets: cosine mean {mean:.7f}, min {minimum:.7f}; "
          f"top-10 neighbour agreement {agreement:.4f}")


if __name__ == "__main__":
    main()
