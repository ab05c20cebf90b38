#!/usr/bin/env python
"""Extraction throughput and peak memory.

Throughput, on the same images, model and batch size, in one run:

- bare model: ``predict_on_batch`` on already-decoded, already-resized arrays
  (the ceiling: no decoding, no disk);
- pipeline: :func:`similar_images.store.extract_features` (decoding in a thread pool
  overlapped with inference, vectors streamed to disk in shards);
- naive: the original design's serial loop (open each image with
  ``keras.utils.load_img``, preprocess, ``predict_on_batch`` per batch,
  ``np.concatenate`` at the end).

The three are measured in interleaved rounds, in a rotating order, and the
per-round ratios are reported with their median, since these machines are
noisy. Peak memory (VmHWM) is measured in fresh
subprocesses extracting two collections of different sizes.

    python benchmarks/bench_extract.py                       # 256 COCO photos, vgg16-fc2 (random weights)
    python benchmarks/bench_extract.py --model vgg16-avg \
        --weights ../shared/assets/weights/vgg16_imagenet_notop.weights.h5
    python benchmarks/bench_extract.py --memory              # + peak memory, 256 vs 4,064 images
    python benchmarks/bench_extract.py --backend openvino --precision int8   # another inference backend
    python benchmarks/bench_extract.py --device gpu --batch-size 128         # TensorFlow on a GPU

``--device gpu`` needs a TensorFlow that sees a GPU (``pip install 'tensorflow[and-cuda]'`` on a CUDA
machine) and stops with a message otherwise; ``--device cpu`` (the default) hides any GPU from TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("SIMILAR_IMAGES_ASSETS", ROOT.parent / "shared" / "assets"))


def bare_throughput(embedder, arrays: np.ndarray, batch_size: int) -> float:  # type: ignore[no-untyped-def]
    embedder.embed_arrays(arrays[:batch_size])  # warm up
    t0 = time.perf_counter()
    for i in range(0, len(arrays), batch_size):
        embedder.embed_arrays(arrays[i:i + batch_size])
    return len(arrays) / (time.perf_counter() - t0)


def naive_throughput(model, paths: list[Path], batch_size: int, preprocess) -> float:  # type: ignore[no-untyped-def]
    import keras

    t0 = time.perf_counter()
    outputs, batch = [], []
    for p in paths:
        img = keras.utils.load_img(p, target_size=(224, 224))
        batch.append(keras.utils.img_to_array(img))
        if len(batch) == batch_size:
            outputs.append(model.predict_on_batch(preprocess(np.stack(batch))))
            batch = []
    if batch:
        outputs.append(model.predict_on_batch(preprocess(np.stack(batch))))
    np.concatenate(outputs)
    return len(paths) / (time.perf_counter() - t0)


def peak_memory(images: Path, model: str, weights: str) -> tuple[int, float, int]:
    """Run an extraction in a fresh process; return (images, seconds, peak RSS in MiB)."""
    code = (
        "import sys, time; from similar_images import ExtractConfig; from similar_images.store import extract_features;"
        "t=time.perf_counter();"
        f"s=extract_features({str(images)!r}, sys.argv[1], ExtractConfig(model={model!r}, weights={weights!r},"
        " verbose=False));"
        "hwm=[l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1];"
        "print(s.total, time.perf_counter()-t, int(hwm)//1024)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", code, str(Path(tmp) / "db")], capture_output=True, text=True,
                             check=True).stdout.split()
    return int(out[0]), float(out[1]), int(out[2])


def setup_device(device: str) -> str:
    """Make TensorFlow use the GPU(s) or the CPU only; returns a description."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu":
        if not gpus:
            sys.exit("--device gpu: TensorFlow sees no GPU here (a CUDA machine with "
                     "`pip install 'tensorflow[and-cuda]'` is needed); run with --device cpu")
        for g in gpus:
            tf.config.experimental.set_memory_growth(g, True)
        return f"GPU ({', '.join(g.name for g in gpus)})"
    if gpus:
        tf.config.set_visible_devices([], "GPU")
    return "CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=ASSETS / "images" / "coco", help="folder of images")
    ap.add_argument("--model", default="vgg16-fc2", help="model name")
    ap.add_argument("--weights", default="random", help="'random', 'imagenet' or a weights file")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where TensorFlow runs the model")
    ap.add_argument("--backend", choices=["keras", "openvino"], default="keras", help="inference backend")
    ap.add_argument("--precision", choices=["fp32", "bf16", "int8", "auto"], default="fp32")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of bare / pipeline / naive")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory (256 vs 4,064 images)")
    ap.add_argument("--memory-model", default="mobilenetv2", help="model for the memory runs")
    ap.add_argument("--memory-weights", default=str(ASSETS / "weights" /
                    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"))
    args = ap.parse_args()

    from similar_images import ExtractConfig
    from similar_images.embed import ImageEmbedder
    from similar_images.sources.images import find_images
    from similar_images.store import extract_features

    if args.device == "gpu" and args.backend != "keras":
        sys.exit("--device gpu runs the keras backend (TensorFlow's GPU path); leave out --backend")
    device = setup_device(args.device)
    paths = find_images(args.images)
    emb = ImageEmbedder(args.model, args.weights, batch_size=args.batch_size, backend=args.backend,
                        precision=args.precision, calibration=paths).resolve()
    arrays = np.stack([emb.prepare(p) for p in paths])
    print(f"{len(paths)} images from {args.images}, model {args.model} ({args.weights} weights), "
          f"{emb.backend} {emb.precision}, batch {args.batch_size}, {os.cpu_count()} CPUs, device {device}")

    def pipeline_throughput() -> float:
        # The same warm embedder as the baseline: both measured after the model's one-time build and trace.
        with tempfile.TemporaryDirectory() as tmp:
            s = extract_features(paths, Path(tmp) / "db", ExtractConfig(model=args.model, weights=args.weights,
                                                                        batch_size=args.batch_size, verbose=False),
                                 embedder=emb)
        return s.images_per_second

    runners = {
        "bare": lambda: bare_throughput(emb, arrays, args.batch_size),
        "pipeline": pipeline_throughput,
        "naive": lambda: naive_throughput(emb.model, paths, args.batch_size, emb.spec.preprocess),
    }
    names = list(runners)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):  # interleaved, in a rotating order, so load drift hits all three alike
        for name in names[r % 3:] + names[:r % 3]:
            rates[name].append(runners[name]())
        print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.2f}" for n in names) + " images/s")
    ratio_bare = [p / b for p, b in zip(rates["pipeline"], rates["bare"])]
    ratio_naive = [p / n for p, n in zip(rates["pipeline"], rates["naive"])]
    med = {n: float(np.median(v)) for n, v in rates.items()}
    print(f"bare model (decoded arrays): {med['bare']:7.2f} images/s (median of {args.rounds})")
    print(f"pipeline (extract_features): {med['pipeline']:7.2f} images/s = {np.median(ratio_bare):.1%} of bare "
          f"(per round: {', '.join(f'{x:.0%}' for x in ratio_bare)}; target >= 90%) -> "
          f"{'PASS' if np.median(ratio_bare) >= 0.9 else 'FAIL'}")
    print(f"naive serial loop          : {med['naive']:7.2f} images/s -> pipeline is {np.median(ratio_naive):.2f}x "
          f"{'faster' if np.median(ratio_naive) > 1 else 'SLOWER'} (per round: "
          f"{', '.join(f'{x:.2f}x' for x in ratio_naive)})")

    if args.memory:
        small = peak_memory(ASSETS / "images" / "coco", args.memory_model, args.memory_weights)
        large = peak_memory(ASSETS / "images" / "flowers5", args.memory_model, args.memory_weights)
        for n, sec, mib in (small, large):
            print(f"peak memory, {n:5d} images ({args.memory_model}): {mib:5d} MiB  ({n / sec:.1f} images/s)")
        growth = large[2] / small[2]
        print(f"memory ratio {large[0]}/{small[0]} images: {growth:.2f}x for {large[0] / small[0]:.1f}x the images "
              f"-> {'PASS (flat)' if growth < 1.15 else 'FAIL (grows)'}")


if __name__ == "__main__":
    main()
