"""Engines that run the one resumable build elsewhere than in this process: :mod:`.spark` (Apache Spark, on a
cluster or in local mode). An engine has ``run(job, shards, embedder, progress)`` (see
:class:`similar_images.store.build.Engine`); pyspark and Java are needed only when a Spark engine runs."""
