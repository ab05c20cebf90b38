"""Engines: what computes a build's vectors and an index, below the store that owns the files.

* :mod:`.local`: the :class:`~.local.Engine` protocol (``run(job, shards, embedder, progress)`` embeds the
  shards of a :class:`~.local.BuildJob`; ``build_index(vectors, config, ...)`` trains and fills an index) and
  :class:`~.local.LocalEngine`, which does both in this process;
* :mod:`.shards`: the shard files an engine commits;
* :mod:`.spark`: :class:`~.spark.SparkEngine`, both on Apache Spark (pyspark and Java are needed only when it
  runs);
* :mod:`.arriving`: :class:`~.arriving.ArrivingEngine`, for items still arriving (the quick start).

Nothing here imports :mod:`similar_images.store`: the store plans, locks and commits; an engine only computes.
"""
