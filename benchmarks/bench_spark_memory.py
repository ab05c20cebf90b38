#!/usr/bin/env python
"""Memory of a Spark executor's Python worker: resident peak, and the smallest ``spark.executor.pyspark.memory``.

PySpark enforces ``spark.executor.pyspark.memory`` as an address-space limit (``RLIMIT_AS``) on each Python
worker, not as resident memory: TensorFlow reserves far more address space (thread stacks, allocator arenas,
mapped libraries) than it touches, so a limit sized from the resident memory kills the worker while the model
loads. For each model this script runs what an executor's task runs (TensorFlow limited to one thread as in a
one-core task, the model built and warmed up, one batch of real photos embedded) in a fresh process:

1. without a limit: peak resident memory (``ru_maxrss``, what ``_peak_rss_mb`` reports) and peak address space
   (``VmPeak``);
2. under ``RLIMIT_AS`` limits, bisected in 128 MiB steps: the smallest limit at which it loads and runs;
3. with ``--spark``: a real Spark ``local[1]`` extraction with ``spark.executor.pyspark.memory`` at the
   recommended value (the smallest rounded up to 0.5 GiB, plus 0.5 GiB) and at the smallest limit less 512 MiB,
   to check that the first runs and the second fails.

    python benchmarks/bench_spark_memory.py --spark
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("SIMILAR_IMAGES_ASSETS", ROOT.parent / "shared" / "assets"))
MODELS = {
    "mobilenetv2": ASSETS / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
    "vgg16-avg": ASSETS / "weights" / "vgg16_imagenet_notop.weights.h5",
}

_PROBE = r"""
import json, os, resource, sys
limit = int(sys.argv[3])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit << 20, limit << 20))
from similar_images.embed import ImageEmbedder
from similar_images.engines.spark import _limit_threads, _peak_rss_mb
_limit_threads(1)
emb = ImageEmbedder(sys.argv[1], sys.argv[2], batch_size=32)
emb.warm_up()
emb.embed(json.loads(sys.argv[4]))
peak = [ln for ln in open("/proc/self/status") if ln.startswith("VmPeak")][0].split()[1]
print(json.dumps({"rss_mb": _peak_rss_mb(), "vmpeak_mb": int(peak) / 1024}))
"""


def probe(model: str, weights: Path, limit_mb: int, photos: list[str]) -> dict[str, float] | None:
    """Run a task's model work in a fresh process under an address-space limit (0: none); None if it failed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run([sys.executable, "-c", _PROBE, model, str(weights), str(limit_mb), json.dumps(photos)],
                       capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def spark_run(model: str, weights: Path, limit_mb: int, photos: list[str]) -> str:
    """A Spark ``local[1]`` extraction with ``spark.executor.pyspark.memory``: 'ran' or the error."""
    from similar_images import ExtractConfig, extract_features
    from similar_images.engines.spark import SparkEngine
    from similar_images.errors import SimilarImagesError

    engine = SparkEngine("local[1]", conf={"spark.executor.pyspark.memory": f"{limit_mb}m"})
    config = ExtractConfig(model=model, weights=str(weights), precision="fp32", batch_size=32, shard_size=32,
                           verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            extract_features(photos, Path(tmp) / "db", config, engine=engine)
        except SimilarImagesError as exc:
            return f"failed ({str(exc)[:160]})"
    return "ran"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--images", type=Path, default=ASSETS / "images" / "coco" / "val2014")
    ap.add_argument("--spark", action="store_true", help="check the limits with real Spark local[1] runs")
    args = ap.parse_args()
    photos = [str(p) for p in sorted(args.images.glob("*.jpg"))[:32]]
    print(f"{len(photos)} photos from {args.images}, batch 32, TensorFlow on 1 thread, {os.cpu_count()} CPUs")
    for model in args.models.split(","):
        weights = MODELS[model]
        free = probe(model, weights, 0, photos)
        assert free is not None, f"{model} does not run even without a limit"
        lo, hi = int(free["rss_mb"]), int(math.ceil(free["vmpeak_mb"] / 128) * 128) + 128
        while probe(model, weights, hi, photos) is None:  # VmPeak may undercount what a limit must allow
            lo, hi = hi, hi * 2
        while hi - lo > 128:
            mid = (lo + hi) // 2
            if probe(model, weights, mid, photos) is None:
                lo = mid
            else:
                hi = mid
        advice = int(math.ceil(hi / 512) * 512) + 512
        print(f"{model}: peak resident {free['rss_mb']:.0f} MiB; peak address space {free['vmpeak_mb']:.0f} MiB; "
              f"smallest RLIMIT_AS that loads and runs it: {hi} MiB (fails at {lo}); advice: "
              f"spark.executor.pyspark.memory={advice}m", flush=True)
        if args.spark:
            print(f"  Spark local[1], pyspark.memory={advice}m: {spark_run(model, weights, advice, photos)}; "
                  f"{max(512, lo - 512)}m: {spark_run(model, weights, max(512, lo - 512), photos)}", flush=True)


if __name__ == "__main__":
    main()
