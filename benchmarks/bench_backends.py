#!/usr/bin/env python
"""Inference backends and precisions (issue 13): speed bare and end to end, quality, peak memory.

For each model and each variant (Keras fp32 / bf16, OpenVINO fp32 / bf16 / int8, each OpenVINO one
``sync`` = latency hint, one request at a time, and ``async`` = throughput hint, several requests
in flight), in one run:

- bare: the runner on already decoded images (preprocess + inference + normalisation: the ceiling);
- end to end: :func:`similar_images.store.extract_features` from the image files into a database folder (the
  library's build: decoding in a thread pool, batches in flight through ``Runner.run_batches``, shards
  committed to disk);
- ratios: each variant against Keras fp32 bare in the same round, and end to end against its own bare.

Variants are measured in interleaved rounds in a rotating order, and the medians of the per-round
figures are reported (these machines are shared and noisy).

Quality (``--quality``): 1,000 flower photos (200 a class), each precision's vectors against Keras
fp32: top-10 neighbour agreement, mean cosine, and precision@10 by class (exact cosine search).

Peak memory (``--memory``): VmHWM of a fresh process running one variant end to end.

    python benchmarks/bench_backends.py                                  # all three models, CPU
    python benchmarks/bench_backends.py --models mobilenetv2 --rounds 5
    python benchmarks/bench_backends.py --quality --memory --json out.json
    python benchmarks/bench_backends.py --device gpu --batch-size 128    # TensorFlow on a GPU (Keras variants)

A bf16 variant runs only where the CPU has native bf16 (AVX512_BF16 / AMX); ``--emulate-bf16`` runs
Keras' bf16 anyway (slow: TensorFlow emulates it). int8 is calibrated on ``--calibration`` images of the
collection measured (default 300; see ``similar_images.embed.backends.Calibration``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("SIMILAR_IMAGES_ASSETS", ROOT.parent / "shared" / "assets"))
WEIGHTS = {
    "vgg16-fc2": "random",
    "vgg16-avg": str(ASSETS / "weights" / "vgg16_imagenet_notop.weights.h5"),
    "vgg16-max": str(ASSETS / "weights" / "vgg16_imagenet_notop.weights.h5"),
    "mobilenetv2": str(ASSETS / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"),
}
ALL_VARIANTS = ["keras-fp32", "keras-bf16", "openvino-fp32-sync", "openvino-fp32-async", "openvino-bf16-sync",
                "openvino-bf16-async", "openvino-int8-sync", "openvino-int8-async"]


@dataclass
class Variant:
    name: str
    backend: str
    precision: str
    mode: str  # "sync" | "async"
    runner: Any = None
    note: str = ""
    bare: list[float] = field(default_factory=list)  # images/s (wall clock)
    e2e: list[float] = field(default_factory=list)
    bare_cpu: list[float] = field(default_factory=list)  # images per CPU-second of the process (all threads)
    e2e_cpu: list[float] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.backend}-{self.precision}"


def parse_variant(name: str) -> Variant:
    parts = name.split("-")
    backend, precision = parts[0], parts[1]
    mode = parts[2] if len(parts) > 2 else "sync"
    return Variant(name, backend, precision, mode)


def l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def run_bare(v: Variant, arrays: np.ndarray, preprocess: Any, bs: int) -> tuple[np.ndarray, float, float]:
    """Preprocess + inference + normalisation on decoded arrays; returns vectors, images/s, images/CPU-s."""
    t0, c0 = time.perf_counter(), time.process_time()
    batches = (preprocess(arrays[i:i + bs]) for i in range(0, len(arrays), bs))
    outs = [v.runner(b) for b in batches] if v.mode == "sync" else \
        list(v.runner.run_batches(batches))
    vectors = l2(np.concatenate(outs))
    return vectors, len(arrays) / (time.perf_counter() - t0), len(arrays) / (time.process_time() - c0)


def run_e2e(v: Variant, paths: list[Path], spec: Any, weights: str, bs: int, workers: int,
            decoder: str = "pil") -> tuple[float, float]:
    """extract_features with the variant's runner; returns images/s (the build's own clock, after the model is
    built) and images per CPU-second of the process."""
    from similar_images.embed import ImageEmbedder
    from similar_images.store import ExtractConfig, extract_features

    emb = ImageEmbedder(spec, None if weights == "random" else weights, backend=v.backend,
                        precision=v.runner.precision, batch_size=bs, decoder=decoder)
    emb._runner = v.runner  # the runner measured bare: the same compiled model, requests and hint
    config = ExtractConfig(model=spec.name, weights=weights, batch_size=bs, workers=workers, verbose=False,
                           shard_size=max(1024, len(paths)))
    with tempfile.TemporaryDirectory() as tmp:
        c0 = time.process_time()
        s = extract_features([str(p) for p in paths], Path(tmp) / "db", config, embedder=emb)
        cpu = time.process_time() - c0
    return s.images_per_second, s.extracted / cpu


def decode_costs(folders: list[Path], size: tuple[int, int] = (224, 224), n: int = 256) -> list[dict[str, Any]]:
    """CPU-milliseconds per image of images.prepare_array, Pillow path against the scaled-JPEG path."""
    from similar_images.sources import fastjpeg as _fastjpeg
    from similar_images.sources.images import find_images, prepare_array

    out = []
    for folder in folders:
        paths = find_images(folder)[:n]
        row: dict[str, Any] = {"images": str(folder), "count": len(paths)}
        for name, on in (("pillow", False), ("scaled_jpeg", True)) * 2:  # twice, interleaved; keep the best
            if on and not _fastjpeg.available():
                continue
            prepare_array(paths[0], size, fast_jpeg=on)
            c0 = time.thread_time()
            for p in paths:
                prepare_array(p, size, fast_jpeg=on)
            ms = (time.thread_time() - c0) / len(paths) * 1e3
            row[name] = min(ms, row.get(name, ms))
        out.append(row)
    return out


def precision_at_10(vectors: np.ndarray, labels: np.ndarray) -> float:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    nn = np.argpartition(-sims, 9, axis=1)[:, :10]
    return float((labels[nn] == labels[:, None]).mean())


def peak_memory(model: str, variant: str, args: argparse.Namespace) -> tuple[float, int]:
    """Run one variant end to end in a fresh process; returns (images/s, VmHWM MiB)."""
    cmd = [sys.executable, __file__, "--child", "--models", model, "--variants", variant, "--images",
           str(args.images), "--limit", str(args.limit or 0), "--batch-size", str(args.batch_size),
           "--calibration", str(args.calibration), "--workers", str(args.workers), "--decoder", args.decoder]
    if args.cache_dir:
        cmd += ["--cache-dir", str(args.cache_dir)]
    if args.quality:  # the same calibration sample, hence the same cached int8 model
        cmd.append("--quality")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    rate, mib = out.split()
    return float(rate), int(mib)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vgg16-fc2,vgg16-avg,mobilenetv2")
    ap.add_argument("--variants", default=",".join(ALL_VARIANTS))
    ap.add_argument("--images", type=Path, default=ASSETS / "images" / "coco", help="photos for the speed runs")
    ap.add_argument("--limit", type=int, default=0, help="at most this many photos for the speed runs")
    ap.add_argument("--vgg-limit", type=int, default=96, help="photos for the VGG speed runs (they are slow)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="decoding threads (default: CPUs)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--decoder", choices=["pil", "fast"], default="pil", help="image decoding end to end")
    ap.add_argument("--calibration", type=int, default=300, help="int8 calibration images (from --images' "
                    "collection, or the flowers with --quality)")
    ap.add_argument("--quality", action="store_true", help="agreement and precision@10 on 1,000 flower photos")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed rounds (quality / memory only)")
    ap.add_argument("--decode", action="store_true", help="CPU cost of decoding, Pillow vs scaled JPEG, then exit")
    ap.add_argument("--quality-images", type=int, default=1000)
    ap.add_argument("--memory", action="store_true", help="peak memory of each variant in a fresh process")
    ap.add_argument("--emulate-bf16", action="store_true", help="run Keras bf16 even without native bf16")
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--cache-dir", type=Path, default=None, help="model cache (default: the user cache)")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.workers = args.workers or min(8, os.cpu_count() or 1)

    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from similar_images.embed import get_model_spec
    from similar_images.embed.backends import Calibration, RunnerFactory, cpu_capabilities, topk_agreement
    from similar_images.embed.backends.factory import make_runner
    from similar_images.sources.images import find_images, prepare_array

    if args.decode:
        for row in decode_costs([args.images, ASSETS / "images" / "flowers5"]):
            print(f"decode {row['count']} images from {row['images']}: Pillow {row['pillow']:.2f} CPU-ms/image, "
                  f"scaled JPEG {row.get('scaled_jpeg', float('nan')):.2f} CPU-ms/image")
        return
    from bench_extract import setup_device  # the same device set-up as the extraction benchmark

    device = setup_device(args.device)
    cpu = cpu_capabilities()
    all_paths = find_images(args.images)
    flowers = find_images(ASSETS / "images" / "flowers5")
    labels_all = np.array([p.parent.name for p in flowers])
    per = args.quality_images // len(set(labels_all))
    rng = np.random.default_rng(0)
    quality_pick = np.sort(np.concatenate([rng.choice(np.where(labels_all == c)[0], per, replace=False)
                                           for c in sorted(set(labels_all))]))
    report: dict[str, Any] = {"cpus": os.cpu_count(), "cpu": cpu.to_dict(), "device": device, "models": {}}
    if not args.child:
        print(f"{os.cpu_count()} CPUs ({cpu.model}; bf16 {'yes' if cpu.bf16 else 'no'}, VNNI "
              f"{'yes' if cpu.vnni else 'no'}), device {device}, batch {args.batch_size}, {args.workers} decoding "
              f"threads, {args.rounds} interleaved rounds")

    for model in args.models.split(","):
        spec = get_model_spec(model)
        weights = WEIGHTS[model]
        limit = args.limit or (args.vgg_limit if model.startswith("vgg") else 0)
        paths = all_paths[:limit] if limit else all_paths
        variants = [parse_variant(v) for v in args.variants.split(",")]
        if args.device == "gpu":
            variants = [v for v in variants if v.backend == "keras"]
        factory = RunnerFactory(spec, weights, cache_dir=args.cache_dir, emulate=args.emulate_bf16)
        latency = RunnerFactory(spec, weights, cache_dir=args.cache_dir)
        latency.hint = "latency"
        latency._keras = factory._keras  # share the Keras model
        # int8 calibrates on the user's collection: with --quality, flower photos outside the quality set
        # (so the agreement is measured on held-out photos), else the speed photos.
        cal_source = [flowers[i] for i in np.setdiff1d(np.arange(len(flowers)), quality_pick)] if args.quality \
            else all_paths
        calibration = Calibration(cal_source, size=args.calibration, seed=1)
        kept: list[Variant] = []
        for v in variants:
            ok, note = factory.supported(v.backend, v.precision)
            if not ok:
                if not args.child:
                    print(f"  {model} {v.name}: skipped ({note})")
                continue
            t0 = time.perf_counter()
            f = latency if v.mode == "sync" and v.backend == "openvino" else factory
            v.runner = make_runner(spec, weights, v.backend, v.precision, calibration=calibration, factory=f)
            v.note = note
            v.runner(spec.preprocess(np.stack([prepare_array(p, spec.input_size) for p in paths[:args.batch_size]])))
            if not args.child:
                print(f"  {model} {v.name}: ready in {time.perf_counter() - t0:.1f} s ({v.runner!r}"
                      f"{'; ' + note if note else ''})", flush=True)
            kept.append(v)
        variants = kept

        if args.child:  # one variant end to end, then peak memory
            rate, _ = run_e2e(variants[0], paths, spec, weights, args.batch_size, args.workers, args.decoder)
            hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1]
            print(f"{rate:.2f} {int(hwm) // 1024}")
            return

        arrays = np.stack([prepare_array(p, spec.input_size) for p in paths])
        print(f"{model} ({weights if weights == 'random' else Path(weights).name}): {len(paths)} photos from "
              f"{args.images}", flush=True)
        for r in range(0 if args.no_speed else args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:
                _, rate, per_cpu = run_bare(v, arrays, spec.preprocess, args.batch_size)
                v.bare.append(rate)
                v.bare_cpu.append(per_cpu)
                rate, per_cpu = run_e2e(v, paths, spec, weights, args.batch_size, args.workers, args.decoder)
                v.e2e.append(rate)
                v.e2e_cpu.append(per_cpu)
            print(f"  round {r + 1}: " + ", ".join(f"{v.name} {v.bare[-1]:.1f}/{v.e2e[-1]:.1f}" for v in variants)
                  + " images/s (bare/end to end)", flush=True)
        base = next((v for v in variants if v.name == "keras-fp32"), variants[0])
        rows = []
        if args.no_speed:
            variants_speed: list[Variant] = []
        else:
            variants_speed = variants
        if variants_speed:
            print(f"  {'variant':22s} {'bare img/s':>10s} {'e2e img/s':>10s} {'e2e/bare':>9s} {'bare vs':>8s} "
                  f"{'e2e vs':>8s}   (vs = against {base.name} bare, same round; medians)")
        for v in variants_speed:
            pipe = [e / b for e, b in zip(v.e2e, v.bare)]
            vs_bare = [b / k for b, k in zip(v.bare, base.bare)]
            vs_e2e = [e / k for e, k in zip(v.e2e, base.bare)]
            cpu_bare = [b / k for b, k in zip(v.bare_cpu, base.bare_cpu)]
            cpu_e2e = [e / k for e, k in zip(v.e2e_cpu, base.bare_cpu)]
            row = {"variant": v.name, "note": v.note, "bare": float(np.median(v.bare)), "e2e": float(np.median(v.e2e)),
                   "e2e_over_bare": float(np.median(pipe)), "bare_vs_keras_fp32": float(np.median(vs_bare)),
                   "e2e_vs_keras_fp32": float(np.median(vs_e2e)), "rounds_bare": v.bare, "rounds_e2e": v.e2e,
                   "bare_per_cpu_s": float(np.median(v.bare_cpu)), "e2e_per_cpu_s": float(np.median(v.e2e_cpu)),
                   "cpu_e2e_over_bare": float(np.median([e / b for e, b in zip(v.e2e_cpu, v.bare_cpu)])),
                   "cpu_bare_vs_keras_fp32": float(np.median(cpu_bare)),
                   "cpu_e2e_vs_keras_fp32": float(np.median(cpu_e2e))}
            rows.append(row)
            print(f"  {v.name:22s} {row['bare']:10.2f} {row['e2e']:10.2f} {row['e2e_over_bare']:9.0%} "
                  f"{row['bare_vs_keras_fp32']:7.2f}x {row['e2e_vs_keras_fp32']:7.2f}x "
                  f"{'PASS' if row['e2e_over_bare'] >= 0.9 else 'below 90%'}")
        if rows:
            print("  per CPU-second of the process (less sensitive to other load on the machine):")
            print(f"  {'variant':22s} {'bare img/cpu-s':>14s} {'e2e img/cpu-s':>14s} {'e2e/bare':>9s} "
                  f"{'bare vs':>8s} {'e2e vs':>8s}")
        for row in rows:
            print(f"  {row['variant']:22s} {row['bare_per_cpu_s']:14.2f} {row['e2e_per_cpu_s']:14.2f} "
                  f"{row['cpu_e2e_over_bare']:9.0%} {row['cpu_bare_vs_keras_fp32']:7.2f}x "
                  f"{row['cpu_e2e_vs_keras_fp32']:7.2f}x")
        entry: dict[str, Any] = {"weights": weights, "photos": len(paths), "speed": rows}

        if args.quality:
            pick = quality_pick
            labels = labels_all[pick]
            farrays = np.stack([prepare_array(flowers[i], spec.input_size) for i in pick])
            vectors: dict[str, np.ndarray] = {}
            for v in variants:
                if v.key not in vectors:
                    vectors[v.key] = run_bare(v, farrays, spec.preprocess, args.batch_size)[0]
            ref = vectors.get("keras-fp32", next(iter(vectors.values())))
            quality = []
            print(f"  quality on {len(pick)} flower photos ({per} a class), against keras-fp32:")
            for key, vec in vectors.items():
                q = {"variant": key, "agreement_top10": topk_agreement(ref, vec, 10),
                     "mean_cosine": float(np.sum(ref * vec, axis=1).mean()),
                     "precision_at_10": precision_at_10(vec, labels)}
                quality.append(q)
                print(f"    {key:16s} agreement {q['agreement_top10']:.4f}  cosine {q['mean_cosine']:.5f}  "
                      f"precision@10 {q['precision_at_10']:.4f}")
            entry["quality"] = quality
        if args.memory:
            entry["memory"] = []
            for v in variants:
                rate, mib = peak_memory(model, v.name, args)
                entry["memory"].append({"variant": v.name, "peak_mib": mib, "images_per_second": rate})
                print(f"  peak memory {v.name:22s} {mib:6d} MiB ({rate:.1f} images/s end to end, fresh process)")
        report["models"][model] = entry
        for v in variants:
            v.runner = None
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
