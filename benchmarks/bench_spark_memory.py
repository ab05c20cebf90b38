#!/usr/bin/env python
"""Memory of a Spark executor's Python worker: resident peak, and the smallest ``spark.executor.pyspark.memory``.

PySpark enforces ``spark.executor.pyspark.memory`` as an address-space limit (``RLIMIT_AS``) on each Python
worker, not as resident memory: TensorFlow reserves far more address space (thread stacks, allocator arenas,
mapped libraries) than it touches, so a limit sized from the resident memory kills the worker while the model
loads. For each model this script runs what an executor's task runs (TensorFlow limited to one thread as in a
one-core task, the model built and warmed up, one batch of real photos embedded) in a fresh process:

1. without a limit: peak resident memory (``ru_maxrss``, what ``_peak_rss_mb`` reports) and peak address space
   (``VmPeak``);
2. under ``RLIMIT_AS`` at the peak address space rounded up to 256 MiB (it must run), and 256 MiB less (where
   TensorFlow fails or spins on failed allocations: a probe that takes 3 times the unlimited run's time plus a
   minute counts as failed);
3. with ``--spark``: a real Spark ``local[1]`` extraction with ``spark.executor.pyspark.memory`` at the
   recommended value (the limit that runs rounded up to 0.5 GiB, plus 0.5 GiB), to check that it runs.

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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("SIMILAR_IMAGES_ASSETS", ROOT.parent / "shared" / "assets"))
MODELS = {
    "mobilenetv2": ASSETS / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
    "vgg16-avg": ASSETS / "weights" / "vgg16_imagenet_notop.weights.h5",
    "vgg16-fc2": Path("random"),  # the fc layers' ImageNet weights are not in the assets: same sizes, random values
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


def probe(model: str, weights: Path, limit_mb: int, photos: list[str], timeout: float = 900
          ) -> dict[str, float] | None:
    """Run a task's model work in a fresh process under an address-space limit (0: none); None if it failed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE, model, str(weights), str(limit_mb), json.dumps(photos)],
                           capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  {model} under {limit_mb} MiB: no result in {timeout:.0f} s", flush=True)
        return None
    print(f"  {model} under {limit_mb or 'no'} MiB: exit {r.returncode} in {time.perf_counter() - t0:.0f} s",
          flush=True)
    if r.returncode != 0:
        return None
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "seconds": time.perf_counter() - t0}


def spark_run(model: str, weights: Path, limit_mb: int, photos: list[str]) -> str:
    """A Spark ``local[1]`` extraction with ``spark.executor.pyspark.memory``: 'ran' or the error."""
    from similar_images import ExtractConfig
    from similar_images.engines.spark import SparkEngine
    from similar_images.errors import SimilarImagesError
    from similar_images.store import extract_features

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
    ap.add_argument("--models", default=",".join(MODELS), help=f"some of: {', '.join(MODELS)}")
    ap.add_argument("--images", type=Path, default=ASSETS / "images" / "coco" / "val2014")
    ap.add_argument("--spark", action="store_true", help="check the limits with real Spark local[1] runs")
    args = ap.parse_args()
    photos = [str(p) for p in sorted(args.images.glob("*.jpg"))[:32]]
    print(f"{len(photos)} photos from {args.images}, batch 32, TensorFlow on 1 thread, {os.cpu_count()} CPUs")
    for model in args.models.split(","):
        weights = MODELS[model]
        free = probe(model, weights, 0, photos)
        assert free is not None, f"{model} does not run even without a limit"
        limit = int(math.ceil(free["vmpeak_mb"] / 256) * 256)
        patience = 3 * free["seconds"] + 60
        while probe(model, weights, limit, photos, patience) is None:  # VmPeak may undercount what is needed
            limit += 256
            assert limit < free["vmpeak_mb"] + 2048, f"{model} does not run under {limit} MiB"
        below = limit - 256
        fails = probe(model, weights, below, photos, patience) is None
        advice = int(math.ceil(limit / 512) * 512) + 512
        print(f"{model}: peak resident {free['rss_mb']:.0f} MiB; peak address space {free['vmpeak_mb']:.0f} MiB; "
              f"RLIMIT_AS {limit} MiB: runs; {below} MiB: {'fails' if fails else 'runs too'}; advice: "
              f"spark.executor.pyspark.memory={advice}m", flush=True)
        if args.spark:
            print(f"  Spark local[1], spark.executor.pyspark.memory={advice}m: "
                  f"{spark_run(model, weights, advice, photos)}", flush=True)


if __name__ == "__main__":
    main()
