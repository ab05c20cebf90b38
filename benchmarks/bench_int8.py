#!/usr/bin/env python
"""int8 recipes (issue 21): what each quantization option costs and gains against OpenVINO fp32.

For each model and each recipe, in one run on the same photos:

- quantization time (NNCF, on the calibration sample);
- top-10 neighbour agreement with fp32 and mean cosine to fp32's vectors, on the calibration sample (what
  ``auto`` measures) and on held-out photos (the rest of ``--images``);
- speed: bare OpenVINO throughput (asynchronous requests, batch 32) on the decoded photos, in interleaved
  rounds with fp32 in every round (the machine is shared); the ratio to fp32 is the median of the per-round
  ratios;
- layers left in floating point.

Recipes (``--recipes``; ``v1`` is the old default, ``ac`` the new one):

    v1          plain post-training quantization (performance preset, fast bias correction, overflow fix auto)
    mixed       v1 with the mixed preset (asymmetric activations)
    fbc         v1 with full bias correction
    ends        v1 keeping the first and the last conv layer in fp32
    nofix       v1 without the overflow fix (8-bit weights; on a CPU without VNNI, int16 sums may saturate)
    ac          accuracy-aware quantization: layers back to fp32 until agreement >= 0.993 (the default)
    ac-mixed    ac with the mixed preset

    python benchmarks/bench_int8.py                                   # vgg16-avg, all recipes, 256 COCO photos
    python benchmarks/bench_int8.py --models vgg16-avg,mobilenetv2 --recipes v1,ac --rounds 3

Then the COCO extrapolation (``--coco``): end to end images/s of ``extract_features`` (decode + model) for
OpenVINO fp32 and the default int8, interleaved, and 40,504 photos divided by the rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench_backends import ASSETS, WEIGHTS  # the same weights table as the backends benchmark

COCO_VAL2014 = 40_504


def recipes() -> dict[str, Any]:
    from similar_images.embed.backends import QuantizationSettings

    v1 = QuantizationSettings(accuracy_control=False)
    return {
        "v1": v1,
        "mixed": replace(v1, preset="mixed"),
        "fbc": replace(v1, fast_bias_correction=False),
        "ends": replace(v1, keep_ends=True),
        "nofix": replace(v1, overflow_fix="disable"),
        "ac": QuantizationSettings(),
        "ac-mixed": QuantizationSettings(preset="mixed"),
    }


def float_layers(ov_model: Any) -> list[str]:
    """Weighted layers whose input is not quantized (no FakeQuantize on their activation path)."""
    out = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        src = op.input_value(0).get_node()
        while src.get_type_name() in ("Convert", "Reshape", "Transpose", "MaxPool", "AvgPool"):
            src = src.input_value(0).get_node()
        if src.get_type_name() != "FakeQuantize":
            out.append(op.get_friendly_name())
    return out


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def speed(runner: Any, x: np.ndarray, bs: int) -> float:
    batches = [x[i:i + bs] for i in range(0, len(x), bs)]
    runner(batches[0])
    t0 = time.perf_counter()
    for _ in runner.run_batches(batches):
        pass
    return len(x) / (time.perf_counter() - t0)


def bench_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from similar_images.embed.backends import RunnerFactory
    from similar_images.embed.backends.auto import cosine_to_reference, topk_agreement
    from similar_images.embed.backends.openvino import OpenVINORunner, quantize_int8
    from similar_images.sources.images import prepare_array

    factory = RunnerFactory(name, WEIGHTS[name], use_cache=False)
    spec = factory.spec
    paths = list_images(args.images)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(paths))
    cal_paths = [paths[i] for i in sorted(order[:args.calibration])]
    held_paths = [paths[i] for i in sorted(order[args.calibration:args.calibration + args.held_out])]
    w, h = spec.input_size
    cal = spec.preprocess(np.stack([prepare_array(p, (w, h)) for p in cal_paths]))
    held = spec.preprocess(np.stack([prepare_array(p, (w, h)) for p in held_paths])) if held_paths else None
    fp32_model = factory.ov_fp32()
    fp32 = OpenVINORunner(fp32_model, "fp32")
    ref_cal = fp32(cal)
    ref_held = fp32(held) if held is not None else None
    table = recipes()
    rows: list[dict[str, Any]] = []
    runners: dict[str, Any] = {}
    for rname in args.recipes.split(","):
        settings = table[rname]
        t0 = time.perf_counter()
        q = quantize_int8(fp32_model, cal, settings)
        qtime = time.perf_counter() - t0
        r = OpenVINORunner(q, "int8")
        runners[rname] = r
        out_cal = r(cal)
        row: dict[str, Any] = {"model": name, "recipe": rname, "settings": settings.to_dict(),
                               "quantize_s": round(qtime, 1),
                               "agreement": topk_agreement(ref_cal, out_cal, 10),
                               "cosine": cosine_to_reference(ref_cal, out_cal)[0],
                               "float_layers": float_layers(q)}
        if held is not None:
            out_held = r(held)
            row["agreement_held_out"] = topk_agreement(ref_held, out_held, 10)
            row["cosine_held_out"] = cosine_to_reference(ref_held, out_held)[0]
        rows.append(row)
        print(f"  {name} {rname}: quantized in {qtime:.0f} s, agreement {row['agreement']:.3f} "
              f"(held out {row.get('agreement_held_out', float('nan')):.3f}), cosine {row['cosine']:.5f}, "
              f"{len(row['float_layers'])} float layers", flush=True)
    x = held if held is not None else cal
    ratios: dict[str, list[float]] = {k: [] for k in runners}
    fp32_speeds: list[float] = []
    names = list(runners)
    for rnd in range(args.rounds):
        base = speed(fp32, x, 32)
        fp32_speeds.append(base)
        for rname in names[rnd % len(names):] + names[:rnd % len(names)]:
            ratios[rname].append(speed(runners[rname], x, 32) / base)
        base2 = speed(fp32, x, 32)  # fp32 again after the round: the ratio uses the mean of both
        fp32_speeds.append(base2)
        for rname in names:
            ratios[rname][-1] *= base / ((base + base2) / 2)
    for row in rows:
        row["speedup"] = statistics.median(ratios[row["recipe"]])
        row["fp32_images_per_s"] = statistics.median(fp32_speeds)
    return rows


def coco(args: argparse.Namespace) -> dict[str, Any]:
    """End to end (decode + model into a database) images/s, fp32 and the default int8, interleaved."""
    from similar_images.store import extract_features

    paths = list_images(args.images)[:args.coco_images]
    out: dict[str, list[float]] = {"fp32": [], "int8": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for precision in (["fp32", "int8"] if rnd % 2 == 0 else ["int8", "fp32"]):
                db = Path(tmp) / f"db-{precision}-{rnd}"
                t0 = time.perf_counter()
                extract_features(paths, db, model=args.coco_model, weights=WEIGHTS[args.coco_model],
                                 backend="openvino", precision=precision, calibration_size=args.calibration)
                dt = time.perf_counter() - t0
                out[precision].append(len(paths) / dt)
                print(f"  end to end {args.coco_model} openvino {precision} round {rnd}: {len(paths) / dt:.2f} "
                      "images/s", flush=True)
    return {p: statistics.median(v) for p, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vgg16-avg")
    ap.add_argument("--recipes", default="v1,mixed,fbc,ends,nofix,ac")
    ap.add_argument("--images", type=Path, default=ASSETS / "images" / "coco")
    ap.add_argument("--calibration", type=int, default=128, help="calibration sample (the rest is held out)")
    ap.add_argument("--held-out", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--coco", action="store_true", help="end to end images/s and the COCO val2014 extrapolation")
    ap.add_argument("--coco-model", default="vgg16-avg")
    ap.add_argument("--coco-images", type=int, default=256)
    ap.add_argument("--no-recipes", action="store_true", help="only the --coco run")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from similar_images.embed.backends import cpu_capabilities

    cpu = cpu_capabilities()
    print(f"CPU: {cpu.model} (vnni={cpu.vnni}, bf16={cpu.bf16}); {os.cpu_count()} cores")
    rows: list[dict[str, Any]] = []
    if not args.no_recipes:
        for name in args.models.split(","):
            rows += bench_model(name, args)
        print()
        print("| model | recipe | quantize s | agreement (sample) | agreement (held out) | mean cosine | "
              "float layers | speed vs fp32 |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['model']} | {r['recipe']} | {r['quantize_s']:.0f} | {r['agreement']:.3f} | "
                  f"{r.get('agreement_held_out', float('nan')):.3f} | {r['cosine']:.5f} | "
                  f"{len(r['float_layers'])} | {r['speedup']:.2f}x |")
    result: dict[str, Any] = {"cpu": cpu.to_dict(), "recipes": rows}
    if args.coco:
        rates = coco(args)
        result["end_to_end"] = rates
        print()
        print(f"End to end, {args.coco_model}, 2 cores, median of {args.rounds} interleaved rounds: "
              f"fp32 {rates['fp32']:.2f} images/s, int8 {rates['int8']:.2f} images/s "
              f"({rates['int8'] / rates['fp32']:.2f}x)")
        for p, rate in rates.items():
            print(f"COCO val2014 ({COCO_VAL2014:,} photos), {p} at {rate:.2f} images/s: "
                  f"{COCO_VAL2014 / rate / 60:.0f} min")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
