"""Choosing an index from measurements on the database's own vectors.

:func:`tune_vectors` (or :func:`tune_database`) builds a sweep of Faiss
indexes -- exact ``Flat``; ``IVF,Flat``; ``IVF,PQ`` with several code sizes;
OPQ and PCA transforms before PQ; ``HNSW``; scalar quantization (SQ8, SQ6, SQ4),
also after a Hadamard rotation (``HR``);
re-ranking of PQ candidates with exact distances (``RFlat``) or with SQ8 codes
(``Refine(SQ8)``) -- and sweeps each one's search-time parameters (``nprobe``,
``efSearch``, ``k_factor``). For every setting it measures:

* **recall@k** against exact search, with sampled database vectors as queries,
  each excluded from its own results (see :mod:`similar_images.evaluation`);
* **latency**: median and p99 of single-query calls and the per-query cost of a
  batch, with one Faiss thread by default (comparable per-core figures);
* **memory**: the serialised size of the index (:func:`~similar_images.index.index_nbytes`),
  which is every byte its search needs: codes, ids (8 bytes per vector), coarse
  centroids, PQ codebooks, OPQ/PCA matrices, HNSW links, and for ``RFlat`` the
  full float vectors it re-ranks with (they are inside the index). The
  database's ``vectors.f32`` is not counted: index searches never read it;
* **build time**: training plus adding all vectors.

It then picks the smallest index (in memory) that reaches the target recall,
and reports the best recall reachable within fractions (1/4, 1/8) of the exact
``Flat`` index's memory. :func:`apply_choice` builds the pick into the
database with its search parameters saved as the defaults.

A search-parameter sweep stops early once recall reaches 1 or stops growing
(two steps in a row adding less than 0.001), since more effort only costs time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import IndexTrainingError
from .evaluation import drop_self, measure_latency, rerank_exact, sample_query_ids
from .index import fallback_nprobe, faiss_threads, nprobe_steps, recall_stalled

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .database import Database
    from .index import BuildReport

__all__ = [
    "TuneConfig",
    "Candidate",
    "TunePoint",
    "TuneReport",
    "default_candidates",
    "candidate_for",
    "tune_vectors",
    "tune_database",
    "pick_point",
    "pareto_points",
    "apply_choice",
    "plot_tuning",
    "clustered_chunks",
    "clustered_vectors",
]

logger = logging.getLogger(__name__)

PARAM_NAMES = {"nprobe": "nprobe", "efSearch": "ef_search", "k_factor": "k_factor"}
ORIGINAL_NPROBE = 4


@dataclass
class TuneConfig:
    """Settings of the tuning sweep.

    Attributes:
        target_recall: Recall@k the pick must reach.
        k: The k of recall@k.
        n_queries: Database vectors used as queries (each excluded from its own results).
        latency_queries: Queries timed one at a time per setting.
        factories: Index descriptions to try instead of :func:`default_candidates` (``Flat``
            is always added, as the reference for memory).
        train_size: Training sample of every index (default: as ``build-index``).
        threads: Faiss threads while searching and timing (builds use Faiss' default).
        max_latency_ms: If set, the pick must also answer a single query within this median time.
        memory_fractions: Memory budgets, as fractions of ``Flat``, for which the best recall is reported.
        rerank: Depth of the exact re-ranking that :meth:`Database.search <similar_images.database.Database.search>`
            applies by default (``k * rerank`` index candidates re-scored with the stored vectors); every
            setting is also measured that way ("served"). 0 or 1 skips it.
        served: Pick by the served recall and latency instead of the index's own.
        seed: Seed of the query sample.
    """

    target_recall: float = 0.95
    k: int = 10
    n_queries: int = 500
    latency_queries: int = 100
    factories: Sequence[str] | None = None
    train_size: int | None = None
    threads: int | None = 1
    max_latency_ms: float | None = None
    memory_fractions: tuple[float, ...] = (0.25, 0.125)
    rerank: int = 4
    served: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rerank < 0:
            raise ValueError(f"rerank must be >= 0, got {self.rerank}")
        if self.served and self.rerank < 2:
            raise ValueError("served=True needs rerank >= 2 (the depth of the search's exact re-ranking)")
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {self.target_recall}")
        for name in ("k", "n_queries", "latency_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be a positive integer, got {self.threads}")
        if self.max_latency_ms is not None and self.max_latency_ms <= 0:
            raise ValueError(f"max_latency_ms must be positive, got {self.max_latency_ms}")
        if self.factories is not None:
            self.factories = [f.strip() for f in self.factories if f and f.strip()]
            if not self.factories:
                raise ValueError("factories is empty; give index descriptions such as 'IVF64,PQ16' or leave it unset")


@dataclass
class Candidate:
    """One index to build, and the search-parameter settings to try on it.

    Attributes:
        factory: The Faiss ``index_factory`` string.
        family: A short group name for tables and plots.
        chains: Lists of parameter settings, each ordered from least to most search effort
            (a chain stops early once recall stops growing).
        min_effort: A chain never stops before these values: the original nprobe 4 and build-index's
            unmeasured default ``min(nlist, max(16, ceil(nlist / 8)))``, efSearch 64, so those settings are
            always measured.
    """

    factory: str
    family: str
    chains: list[list[dict[str, int]]] = field(default_factory=lambda: [[{}]])
    min_effort: dict[str, int] = field(default_factory=dict)


@dataclass
class TunePoint:
    """Measurements of one index with one setting of its search parameters."""

    factory: str
    family: str
    params: dict[str, int]
    recall: float
    latency_ms: float
    p99_ms: float
    batch_ms: float
    memory_bytes: int
    bytes_per_vector: float
    memory_ratio: float
    build_seconds: float
    recall_served: float | None = None
    latency_served_ms: float | None = None
    pareto: bool = False

    def recall_in(self, served: bool) -> float:
        """Recall of the index alone, or as served (after the search's exact re-ranking)."""
        return float(self.recall_served if served and self.recall_served is not None else self.recall)

    def latency_in(self, served: bool) -> float:
        """Median single-query latency of the index alone, or as served."""
        return float(self.latency_served_ms if served and self.latency_served_ms is not None else self.latency_ms)

    @property
    def label(self) -> str:
        """``factory`` followed by its search parameters."""
        ps = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.factory} {ps}".strip()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("recall", "latency_ms", "p99_ms", "batch_ms", "memory_ratio", "bytes_per_vector",
                    "build_seconds", "recall_served", "latency_served_ms"):
            if d[key] is not None:
                d[key] = round(float(d[key]), 5)
        return d


@dataclass
class TuneReport:
    """Everything :func:`tune_vectors` measured, and the decisions drawn from it.

    Each point has two recalls: the index's own (``recall``: what the index
    returns, its memory being every byte that search needs) and, when
    ``rerank >= 2``, the recall as :meth:`Database.search
    <similar_images.database.Database.search>` serves it by default
    (``recall_served``: ``k * rerank`` index candidates re-scored exactly with
    the stored vectors, which it reads from the database's ``vectors.f32``).
    ``served`` says which one the pick uses.
    """

    n_vectors: int
    dim: int
    k: int
    n_queries: int
    queries: str
    target_recall: float
    max_latency_ms: float | None
    threads: int | None
    flat_bytes: int
    points: list[TunePoint]
    skipped: list[tuple[str, str]]
    default_factory: str
    tune_seconds: float
    original_factory: str = ""
    default_nprobe_cap: int | None = None
    rerank: int = 1
    served: bool = False
    memory_fractions: tuple[float, ...] = (0.25, 0.125)

    def find(self, factory: str, **params: int) -> TunePoint | None:
        """The point of ``factory`` whose parameters include ``params`` (e.g. ``nprobe=4``)."""
        for p in self.points:
            if p.factory == factory and all(p.params.get(k) == v for k, v in params.items()):
                return p
        return None

    def _mode(self, served: bool | None) -> bool:
        return self.served if served is None else (served and self.rerank >= 2)

    def pick(self, served: bool | None = None, by: str = "memory") -> TunePoint | None:
        """The smallest (``by="memory"``) or fastest (``"latency"``) setting meeting the target."""
        return pick_point(self.points, self.target_recall, self.max_latency_ms, by, served=self._mode(served))

    @property
    def chosen(self) -> TunePoint | None:
        """The pick: the least memory reaching the target (by the mode in ``served``)."""
        return self.pick()

    @property
    def fastest(self) -> TunePoint | None:
        """The fastest setting reaching the target."""
        return self.pick(by="latency")

    def budgets(self, served: bool | None = None) -> dict[float, TunePoint | None]:
        """The best recall within each memory budget (a fraction of Flat's memory)."""
        mode = self._mode(served)
        out: dict[float, TunePoint | None] = {}
        for frac in self.memory_fractions:
            within = [p for p in self.points if p.memory_bytes <= frac * self.flat_bytes]
            out[frac] = max(within, key=lambda p: (p.recall_in(mode), -p.latency_in(mode))) if within else None
        return out

    @property
    def original(self) -> TunePoint | None:
        """The original design: ``IVF{sqrt N},PQ16`` searched with nprobe 4."""
        return self.find(self.original_factory, nprobe=ORIGINAL_NPROBE)

    @property
    def current_default(self) -> TunePoint | None:
        """What ``build-index`` builds by default: :func:`~similar_images.index.default_factory`, with the
        nprobe its calibration would choose from these measurements (the smallest within
        :data:`~similar_images.index.NPROBE_TOLERANCE` of the best served recall, up to its scan budget)."""
        from .index import choose_nprobe  # noqa: PLC0415

        pts = [p for p in self.points if p.factory == self.default_factory and "k_factor" not in p.params]
        cap = self.default_nprobe_cap
        with_nprobe = {p.params["nprobe"]: p for p in pts if "nprobe" in p.params
                       and (cap is None or p.params["nprobe"] <= cap)}
        if not with_nprobe:
            return pts[0] if pts else None
        mode = self._mode(True)
        return with_nprobe[choose_nprobe({n: p.recall_in(mode) for n, p in with_nprobe.items()})]

    def by_factory(self, served: bool | None = None) -> list[TunePoint]:
        """One point per index: the fastest that reaches the target, else the one with the best recall."""
        mode = self._mode(served)
        rows: list[TunePoint] = []
        seen: dict[str, list[TunePoint]] = {}
        for p in self.points:
            seen.setdefault(p.factory, []).append(p)
        for pts in seen.values():
            ok = [p for p in pts if p.recall_in(mode) >= self.target_recall]
            rows.append(min(ok, key=lambda p: p.latency_in(mode)) if ok
                        else max(pts, key=lambda p: (p.recall_in(mode), -p.latency_in(mode))))
        return rows

    def _decision(self, served: bool) -> dict[str, Any]:
        def d(p: TunePoint | None) -> dict[str, Any] | None:
            return p.to_dict() if p else None

        return {"chosen": d(self.pick(served)), "fastest": d(self.pick(served, by="latency")),
                "budgets": {f"{frac:g}": d(p) for frac, p in self.budgets(served).items()}}

    def to_dict(self) -> dict[str, Any]:
        orig, cur = self.original, self.current_default
        out = {
            "n_vectors": self.n_vectors, "dim": self.dim, "k": self.k, "n_queries": self.n_queries,
            "queries": self.queries, "target_recall": self.target_recall, "max_latency_ms": self.max_latency_ms,
            "threads": self.threads, "flat_bytes": self.flat_bytes, "default_factory": self.default_factory,
            "original_factory": self.original_factory, "default_nprobe_cap": self.default_nprobe_cap,
            "rerank": self.rerank, "served": self.served, "tune_seconds": round(self.tune_seconds, 2),
            **self._decision(self.served),
            "index_alone": self._decision(False),
            "as_served": self._decision(True) if self.rerank >= 2 else None,
            "original": orig.to_dict() if orig else None,
            "current_default": cur.to_dict() if cur else None,
            "points": [p.to_dict() for p in self.points],
            "skipped": [{"factory": f, "reason": r} for f, r in self.skipped],
        }
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuneReport:
        """Rebuild a report from :meth:`to_dict`'s output (e.g. a saved ``--json`` file), to re-plot or re-decide
        without measuring again.

        Raises:
            ValueError: If ``data`` is not a tuning report.
        """
        data = data.get("tune", data)  # bench_tune.py nests the report
        if not isinstance(data, dict) or "points" not in data or "flat_bytes" not in data:
            raise ValueError("Not a tuning report: expected the JSON written by 'similar-images tune --json' "
                             "or benchmarks/bench_tune.py --json")
        point_fields = set(TunePoint.__dataclass_fields__)
        points = [TunePoint(**{k: v for k, v in p.items() if k in point_fields}) for p in data["points"]]
        names = ("n_vectors", "dim", "k", "n_queries", "queries", "target_recall", "max_latency_ms", "threads",
                 "flat_bytes", "default_factory", "tune_seconds", "original_factory", "default_nprobe_cap",
                 "rerank", "served")
        fields = {k: data[k] for k in names if k in data}
        fractions = tuple(float(f) for f in (data.get("budgets") or {})) or (0.25, 0.125)
        return cls(points=points, skipped=[(s["factory"], s["reason"]) for s in data.get("skipped", [])],
                   memory_fractions=fractions, **fields)

    def format_table(self, all_points: bool = False) -> str:
        """A plain-text table (one row per index, or every setting) and the decision."""
        rows = self.points if all_points else self.by_factory()
        srv = self.rerank >= 2
        head = (f"{'index':<34}{'params':<20}{f'recall@{self.k}':>10}{'ms/query':>10}{'p99 ms':>9}{'batch ms':>9}"
                + (f"{'served':>8}{'srv ms':>8}" if srv else "")
                + f"{'memory':>11}{'x Flat':>7}{'B/vec':>7}{'build s':>9}")
        lines = [f"{self.n_vectors:,} vectors, {self.dim}-d; {self.n_queries} queries ({self.queries}); "
                 f"latency with {self.threads or 'default'} Faiss thread(s)", head, "-" * len(head)]
        chosen = self.chosen
        for p in rows:
            params = " ".join(f"{k}={v}" for k, v in p.params.items()) or "-"
            mark = " *" if p is chosen else ("  " if not p.pareto else " +")
            served = (f"{p.recall_served:>8.4f}{p.latency_served_ms:>8.3f}"
                      if srv and p.recall_served is not None and p.latency_served_ms is not None else "")
            lines.append(f"{p.factory[:33]:<34}{params[:19]:<20}{p.recall:>10.4f}{p.latency_ms:>10.3f}"
                         f"{p.p99_ms:>9.3f}{p.batch_ms:>9.3f}{served}{_human(p.memory_bytes):>11}"
                         f"{p.memory_ratio:>7.3f}{p.bytes_per_vector:>7.0f}{p.build_seconds:>9.2f}{mark}")
        lines.append("(* the pick; + on the recall/latency/memory Pareto frontier of the index alone; memory = the "
                     "serialised index: every byte its search needs, full vectors included where it keeps them)")
        if srv:
            lines.append(f"(served = as Database.search returns it by default: {self.k} x {self.rerank} index "
                         "candidates re-scored with the stored vectors, which it reads from vectors.f32 on top of "
                         "the index's memory)")
        for name, reason in self.skipped:
            lines.append(f"skipped {name}: {reason}")
        lines.append("")
        lines.extend(self.summary_lines())
        return "\n".join(lines)

    def summary_lines(self) -> list[str]:
        """The decision in a few sentences, for the index alone and, when measured, as served."""
        lines: list[str] = []
        modes = [False, True] if self.rerank >= 2 else [False]
        for served in modes:
            rec = f"recall@{self.k}" + (f" served (re-rank x{self.rerank})" if served else "")
            cond = f"{rec} >= {self.target_recall:g}"
            if self.max_latency_ms is not None:
                cond += f" and median latency <= {self.max_latency_ms:g} ms"
            title = ("As served by Database.search (index candidates re-ranked with the stored vectors)" if served
                     else "Index alone (memory = every byte its search needs)")
            lines.append(title + (":  <- used for the pick" if served == self.served and len(modes) > 1 else ":"))
            chosen, fastest = self.pick(served), self.pick(served, by="latency")
            if chosen:
                lines.append(f"  Pick (smallest with {cond}): {chosen.label}: recall {chosen.recall_in(served):.4f}, "
                             f"{chosen.latency_in(served):.3f} ms, {_human(chosen.memory_bytes)} = "
                             f"{chosen.memory_ratio:.3f} x Flat")
                if served == self.served:
                    lines.append("    apply with: similar-images build-index DB --force " + _cli_args(chosen))
            else:
                best = max(self.points, key=lambda p: p.recall_in(served)) if self.points else None
                lines.append(f"  No setting reaches {cond}" + (
                    f"; best recall {best.recall_in(served):.4f} ({best.label})" if best else ""))
            if fastest and fastest is not chosen:
                lines.append(f"  Fastest with {cond}: {fastest.label}: recall {fastest.recall_in(served):.4f}, "
                             f"{fastest.latency_in(served):.3f} ms, {fastest.memory_ratio:.3f} x Flat")
            for frac, p in self.budgets(served).items():
                if p is None:
                    lines.append(f"  Within {_frac(frac)} of Flat's memory: nothing fits")
                else:
                    lines.append(f"  Best recall within {_frac(frac)} of Flat's memory: {p.recall_in(served):.4f} "
                                 f"with {p.label} ({p.memory_ratio:.3f} x Flat, {p.latency_in(served):.3f} ms)")
            for name, p in (("Original design", self.original), ("Current build-index default",
                                                                 self.current_default)):
                if p is not None:
                    lines.append(f"  {name} {p.label}: recall {p.recall_in(served):.4f}, "
                                 f"{p.latency_in(served):.3f} ms, {p.memory_ratio:.3f} x Flat")
        return lines

    def markdown_table(self) -> str:
        """One row per index (see :meth:`by_factory`) as a Markdown table, for reports and READMEs."""
        srv = self.rerank >= 2
        out = [f"| index | search params | recall@{self.k} | ms/query (1 thread) | "
               + (f"served recall (re-rank x{self.rerank}) | served ms | " if srv else "")
               + "memory | x Flat | build s |",
               "|---|---|---:|---:|" + ("---:|---:|" if srv else "") + "---:|---:|---:|"]
        chosen = self.chosen
        for p in sorted(self.by_factory(), key=lambda p: p.memory_bytes):
            params = ", ".join(f"{k}={v}" for k, v in p.params.items()) or "-"
            name = f"**{p.factory}**" if chosen is not None and p.factory == chosen.factory else p.factory
            served = (f"{p.recall_served:.3f} | {p.latency_served_ms:.3f} | "
                      if srv and p.recall_served is not None and p.latency_served_ms is not None else
                      ("- | - | " if srv else ""))
            out.append(f"| {name} | {params} | {p.recall:.3f} | {p.latency_ms:.3f} | {served}"
                       f"{_human(p.memory_bytes)} | {p.memory_ratio:.3f} | {p.build_seconds:.1f} |")
        return "\n".join(out)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _frac(x: float) -> str:
    inv = 1 / x if x else 0
    return f"1/{inv:g}" if x and abs(inv - round(inv)) < 1e-9 else f"{x:g}"


def _cli_args(p: TunePoint) -> str:
    parts = [f"--index '{p.factory}'"]
    for name, value in p.params.items():
        parts.append(f"--{PARAM_NAMES[name].replace('_', '-')} {value}")
    return " ".join(parts)


# --------------------------------------------------------------------------- the sweep
def _nprobes(nlist: int) -> list[int]:
    values = {v for v in nprobe_steps(nlist) if v <= 1024 or v == nlist}
    values |= {fallback_nprobe(nlist), min(ORIGINAL_NPROBE, nlist)}
    return sorted(values)


EF_SEARCH = (16, 32, 64, 128, 256, 512)
K_FACTORS = (1, 2, 4, 8, 16)


def _nlist_of(factory: str) -> int | None:
    for part in factory.split(","):
        if part.startswith("IVF"):
            digits = "".join(ch for ch in part[3:] if ch.isdigit())
            return int(digits) if digits else None
    return None


def _family(factory: str) -> str:
    f = factory.upper()
    parts = f.split(",")
    if "RFLAT" in parts or "REFINE(FLAT)" in parts:
        return "PQ + exact re-rank"
    if any(p.startswith("REFINE") for p in parts):
        return "PQ + SQ8 re-rank"
    if parts[0].startswith("OPQ"):
        return "OPQ + PQ"
    if parts[0].startswith("PCA"):
        return "PCA + " + ("PQ" if "PQ" in f else "SQ")
    if parts[0].startswith("RR"):
        return "rotation + SQ" if "SQ" in f else "rotation + PQ"
    if parts[0].startswith("HR"):
        return "Hadamard + SQ" if "SQ" in f else "Hadamard + PQ"
    if "HNSW" in f:
        return "HNSW" + (" SQ" if "SQ" in f else "")
    if "PQ" in f:
        return "IVF-PQ" if "IVF" in f else "PQ"
    if "SQ" in f:
        return "IVF-SQ" if "IVF" in f else "SQ"
    if f == "FLAT":
        return "Flat (exact)"
    if "IVF" in f:
        return "IVF-Flat"
    return "other"


def candidate_for(factory: str) -> Candidate:
    """The parameter sweep of one index description (nprobe for IVF, efSearch for HNSW, k_factor for refine)."""
    f = factory.upper()
    nlist = _nlist_of(factory)
    refine = "RFLAT" in f.split(",") or "REFINE" in f
    chains: list[list[dict[str, int]]] = []
    for kf in (K_FACTORS if refine else (None,)):
        base = {"k_factor": kf} if kf is not None else {}
        if nlist:
            chains.append([{"nprobe": v, **base} for v in _nprobes(nlist)])
        elif "HNSW" in f:
            chains.append([{"efSearch": v, **base} for v in EF_SEARCH])
        else:
            chains.append([dict(base)])
    min_effort = ({"nprobe": fallback_nprobe(nlist)} if nlist
                  else {"efSearch": 64} if "HNSW" in f else {})
    return Candidate(factory=factory, family=_family(factory), chains=chains, min_effort=min_effort)


def default_candidates(n: int, d: int) -> list[Candidate]:
    """The default sweep for ``n`` vectors of dimension ``d``.

    * exact ``Flat`` (the reference) and ``IVF,Flat``;
    * scalar quantization, 8, 6 and 4 bits per dimension, in an IVF and as an exhaustive scan
      (no coarse centroids: the least fixed overhead, which matters for small databases);
    * the same after a Hadamard rotation (``HR``: seeded sign flips and fast Walsh-Hadamard transforms,
      stored as a seed, not a matrix; ``d`` is padded to the next power of two). CNN features are skewed:
      a few dimensions carry large values, and a per-dimension SQ range wastes its levels on them; the
      rotation spreads every vector's energy evenly over the dimensions first;
    * ``IVF,PQ`` with code sizes from 16 bytes up to ``d / 4`` bytes (at most 256);
    * OPQ (a learned rotation, and reduction to ``8 m`` dimensions) before PQ, for the smallest code
      (OPQ training is the slowest of the sweep; larger codes can be tried with ``factories``);
    * PCA to ``d / 4`` dimensions before PQ. Faiss' PCA subtracts the mean, which changes
      inner-product rankings (a query ranks by ``<q - mean, y>``), so with non-negative CNN features
      it usually loses many neighbours; it is measured to show it;
    * a random rotation before SQ6 (when ``d <= 1024``: the ``d x d`` matrix is part of the memory),
      the stored-matrix counterpart of ``HR``;
    * ``HNSW32`` with full vectors and with SQ8;
    * the original ``IVF,PQ16`` re-ranked with exact distances (``RFlat``, full vectors kept) or with
      SQ8 codes (``Refine(SQ8)``);
    * build-index's default (:func:`~similar_images.index.default_factory`) and the original design
      (:func:`~similar_images.index.original_factory`).

    IVF indexes use ``nlist = round(sqrt(n))`` coarse lists, as the default index does.
    """
    from .index import default_factory, original_factory  # noqa: PLC0415

    nl = max(1, int(round(math.sqrt(max(n, 1)))))
    ivf = f"IVF{nl}"
    ms = [m for m in (16, 32, 64, 128, 256) if d % m == 0 and m <= d // 4] or \
        [m for m in range(min(16, d), 0, -1) if d % m == 0][:1]
    original = original_factory(n, d)
    names = ["Flat", f"{ivf},Flat", f"{ivf},SQ8", f"{ivf},SQ6", f"{ivf},SQ4", "SQ8", "SQ6",
             "HR,SQ8", "HR,SQ6", "HR,SQ4", f"HR,{ivf},SQ6", "HNSW32", "HNSW32,SQ8", original,
             default_factory(n, d)]
    names += [f"{ivf},PQ{m}" for m in ms]
    d_out = min(d, 8 * ms[0])
    names.append(f"OPQ{ms[0]}_{d_out - d_out % ms[0]},{ivf},PQ{ms[0]}")
    dp = max(8, d // 4)
    mp = next((m for m in (32, 16, 8) if dp % m == 0 and m <= dp // 2), None)
    if mp:
        names.append(f"PCAR{dp},{ivf},PQ{mp}")
    if d <= 1024:
        names.append(f"RR{d},{ivf},SQ6")
    names += [f"{original},RFlat", f"{original},Refine(SQ8)"]
    seen: set[str] = set()
    unique = [x for x in names if not (x in seen or seen.add(x))]  # type: ignore[func-returns-value]
    return [candidate_for(x) for x in unique]


def pareto_points(points: Sequence[TunePoint]) -> list[TunePoint]:
    """Points no other point beats on all of recall (higher), latency and memory (lower)."""
    front = []
    for p in points:
        dominated = any(
            q is not p and q.recall >= p.recall and q.latency_ms <= p.latency_ms and q.memory_bytes <= p.memory_bytes
            and (q.recall > p.recall or q.latency_ms < p.latency_ms or q.memory_bytes < p.memory_bytes)
            for q in points
        )
        if not dominated:
            front.append(p)
    return front


def pick_point(points: Sequence[TunePoint], target_recall: float, max_latency_ms: float | None = None,
               by: str = "memory", *, served: bool = False) -> TunePoint | None:
    """The point with the least memory (``by="memory"``) or latency (``by="latency"``) that meets the target.

    With ``served``, recall and latency are those after the search's exact re-ranking.
    """
    ok = [p for p in points if p.recall_in(served) >= target_recall
          and (max_latency_ms is None or p.latency_in(served) <= max_latency_ms)]
    if not ok:
        return None
    if by == "memory":
        return min(ok, key=lambda p: (p.memory_bytes, p.latency_in(served)))
    return min(ok, key=lambda p: (p.latency_in(served), p.memory_bytes))


def _with_nprobe(chain: list[dict[str, int]], nprobe: int) -> list[dict[str, int]]:
    """``chain`` with a setting at ``nprobe`` added in order (if it has nprobe settings and lacks that one)."""
    if not chain or "nprobe" not in chain[0] or any(p["nprobe"] == nprobe for p in chain):
        return chain
    extra = {**chain[0], "nprobe": nprobe}
    return sorted([*chain, extra], key=lambda p: p["nprobe"])


def _stalled(recalls: list[float]) -> bool:
    return recall_stalled(recalls, 1e-3)


@contextlib.contextmanager
def _quiet_index_warnings() -> Iterator[None]:
    """Mute the index module's per-build warnings ("Faiss recommends at least ... training vectors"), which
    would repeat for every candidate; they are kept when debugging."""
    index_logger = logging.getLogger("similar_images.index")
    level = index_logger.level
    if not index_logger.isEnabledFor(logging.DEBUG):
        index_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        index_logger.setLevel(level)


def _short_reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "failed: " in text:  # a Faiss assertion: keep its message, not the C++ location
        text = text.split("failed: ")[0] + "failed: " + text.split("failed: ")[-1]
    text = text.split(". ")[0]
    return text if len(text) <= 160 else text[:157] + "..."


def tune_vectors(vectors: np.ndarray, config: TuneConfig | None = None, *, ids: np.ndarray | None = None,
                 queries: np.ndarray | None = None) -> TuneReport:
    """Build and measure a sweep of indexes over ``vectors``.

    Args:
        vectors: ``(n, d)`` L2-normalised float32 vectors (a memmap is fine).
        config: Sweep settings.
        ids: Id of each row (default: row numbers).
        queries: Query vectors; default: ``config.n_queries`` sampled rows, each excluded from its own results.

    Returns:
        The :class:`TuneReport`.

    Raises:
        ValueError: If there are too few vectors, or no candidate index could be built.
    """
    from .index import (  # noqa: PLC0415
        IndexConfig,
        build_index,
        default_factory,
        exact_search,
        nprobe_cap,
        original_factory,
        index_nbytes,
        recall_at_k,
        set_search_params,
    )

    config = config or TuneConfig()
    t_start = time.perf_counter()
    n, d = vectors.shape
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if n < 3:
        raise ValueError(f"Tuning needs at least 3 vectors, got {n}")
    if queries is None:
        rows = sample_query_ids(np.arange(n), config.n_queries, config.seed)
        xq = np.ascontiguousarray(vectors[rows], dtype=np.float32)
        self_ids = ids[rows]
        qdesc = "database vectors, each excluded from its own results"
        extra = 1
    else:
        xq = np.ascontiguousarray(queries, dtype=np.float32)
        if xq.ndim != 2 or xq.shape[1] != d or len(xq) == 0:
            raise ValueError(f"Queries of shape {xq.shape} do not match {d}-d vectors")
        self_ids = np.full(len(xq), -1, dtype=np.int64)
        qdesc = "given query vectors"
        extra = 0
    k = min(config.k, n - extra)
    with faiss_threads(config.threads):
        _, truth = exact_search(vectors, xq, k + extra, ids=ids)
    truth, _ = drop_self(truth, self_ids, k)
    candidates = ([candidate_for(f) for f in config.factories] if config.factories
                  else default_candidates(n, d))
    if not any(c.factory == "Flat" for c in candidates):
        candidates.insert(0, candidate_for("Flat"))
    candidates.sort(key=lambda c: c.factory != "Flat")  # Flat first: it is the memory reference
    served = _Reranker(vectors, ids, config.rerank, extra) if config.rerank >= 2 else None
    default, default_cap = default_factory(n, d), None
    points: list[TunePoint] = []
    skipped: list[tuple[str, str]] = []
    flat_bytes = 0
    for cand in candidates:
        logger.info("Building %s", cand.factory)
        try:
            with _quiet_index_warnings():
                index, report = build_index(vectors, IndexConfig(factory=cand.factory, train_size=config.train_size,
                                                                 eval_queries=0, seed=config.seed), ids=ids)
        except (IndexTrainingError, RuntimeError, MemoryError) as exc:
            reason = _short_reason(exc)
            logger.info("Skipping %s: %s", cand.factory, reason)
            skipped.append((cand.factory, reason))
            continue
        mem = index_nbytes(index)
        if cand.factory == "Flat":
            flat_bytes = mem
        if cand.factory == default:
            default_cap = nprobe_cap(index)
            if default_cap is not None:  # measure the nprobe at build-index's scan budget too
                cand.chains = [_with_nprobe(chain, default_cap) for chain in cand.chains]
        for chain in cand.chains:
            recalls: list[float] = []
            recalls_served: list[float] = []
            for params in chain:
                applied = set_search_params(index, params)
                if points and any(p.factory == cand.factory and p.params == applied for p in points):
                    continue  # nprobe clipped to nlist gives a setting already measured
                with faiss_threads(config.threads):
                    _, found = index.search(xq, k + extra)
                found, _ = drop_self(found, self_ids, k)
                recall = float(recall_at_k(found, truth, k))
                lat = measure_latency(index.search, xq, k + extra, n_single=config.latency_queries,
                                      threads=config.threads)
                point = TunePoint(
                    factory=cand.factory, family=cand.family, params=dict(applied), recall=recall,
                    latency_ms=lat.median_ms, p99_ms=lat.p99_ms, batch_ms=lat.batch_ms_per_query, memory_bytes=mem,
                    bytes_per_vector=mem / n, memory_ratio=0.0, build_seconds=report.build_seconds)
                recalls.append(recall)
                if served is not None:
                    search = served.searcher(index)
                    with faiss_threads(config.threads):
                        _, found_s = search(xq, k + extra)
                    found_s, _ = drop_self(found_s, self_ids, k)
                    point.recall_served = float(recall_at_k(found_s, truth, k))
                    point.latency_served_ms = measure_latency(search, xq, k + extra, n_single=config.latency_queries,
                                                              threads=config.threads).median_ms
                    recalls_served.append(point.recall_served)
                points.append(point)
                logger.info("  %s: recall@%d %.4f, %.3f ms%s", point.label, k, recall, lat.median_ms,
                            f"; served {point.recall_served:.4f}, {point.latency_served_ms:.3f} ms"
                            if point.recall_served is not None else "")
                if (_stalled(recalls) and (served is None or _stalled(recalls_served))
                        and all(applied.get(name, 0) >= v for name, v in cand.min_effort.items())):
                    break
        del index
    if not points:
        raise ValueError("No candidate index could be built: " + "; ".join(f"{f}: {r}" for f, r in skipped))
    if not flat_bytes:
        flat_bytes = n * (4 * d + 8)
    for p in points:
        p.memory_ratio = p.memory_bytes / flat_bytes
    for p in pareto_points(points):
        p.pareto = True
    return TuneReport(
        n_vectors=n, dim=d, k=k, n_queries=len(xq), queries=qdesc, target_recall=config.target_recall,
        max_latency_ms=config.max_latency_ms, threads=config.threads, flat_bytes=flat_bytes, points=points,
        skipped=skipped, default_factory=default, tune_seconds=time.perf_counter() - t_start,
        original_factory=original_factory(n, d), default_nprobe_cap=default_cap,
        rerank=config.rerank if config.rerank >= 2 else 1, served=config.served,
        memory_fractions=tuple(config.memory_fractions),
    )


class _Reranker:
    """The search's default exact re-ranking over arbitrary row ids: ``k * depth`` index candidates re-scored
    with the stored vectors (as :func:`similar_images.search.search_vectors` does). ``extra`` result slots
    are for the query itself (dropped afterwards), so it gets one more candidate, not ``depth`` more."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, depth: int, extra: int) -> None:
        self.vectors = vectors
        self.ids = ids
        self.depth = depth
        self.extra = extra
        self.row_of = np.full(int(ids.max()) + 1 if len(ids) else 1, -1, dtype=np.int64)
        self.row_of[ids] = np.arange(len(ids))

    def searcher(self, index: Any) -> Any:
        def search(xq: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
            _, cand = index.search(xq, min((kk - self.extra) * self.depth + self.extra, index.ntotal))
            return rerank_exact(self.vectors, xq, cand, kk, ids=self.ids, row_of=self.row_of)

        return search


def tune_database(db: Database, config: TuneConfig | None = None, *,
                  queries: np.ndarray | None = None) -> TuneReport:
    """:func:`tune_vectors` on the live (not removed) vectors of a database."""
    live = db.live_ids()
    vectors = db.vectors if len(live) == len(db.items) else np.asarray(db.vectors[live])
    return tune_vectors(vectors, config, ids=live, queries=queries)


def apply_choice(db: Database, point: TunePoint, *, train_size: int | None = None,
                 eval_queries: int = 1000) -> BuildReport:
    """Build ``point``'s index into the database (replacing its index) with its search parameters as defaults."""
    from .index import IndexConfig  # noqa: PLC0415

    p = point.params
    config = IndexConfig(factory=point.factory, train_size=train_size, nprobe=p.get("nprobe"),
                         ef_search=p.get("efSearch"), k_factor=p.get("k_factor"), eval_queries=eval_queries)
    return db.build_index(config, force=True)


# --------------------------------------------------------------------------- the plot
def plot_tuning(report: TuneReport, path: str | os.PathLike[str] | None = None, *,
                title: str | None = None, served: bool | None = None) -> Figure:
    """Recall@k against single-query latency, marker area showing memory; optionally saved as a PNG.

    Args:
        report: The tuning report.
        path: Where to save the PNG (atomically); ``None`` only returns the figure.
        title: Figure title.
        served: Plot the recall and latency as served (after the search's exact re-ranking) instead of the
            index's own (default: the report's mode).

    Uses matplotlib's object API (no pyplot, no GUI backend), so it works headless.
    """
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.lines import Line2D  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

    fig = Figure(figsize=(11, 6.8), dpi=80)
    ax = fig.add_subplot(1, 1, 1)
    families = sorted({p.family for p in report.points})
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#7f7f7f", "#393b79", "#e7969c", "#637939"]
    colours = {f: palette[i % len(palette)] for i, f in enumerate(families)}
    max_mem = max(p.memory_bytes for p in report.points)

    def size(mem: float) -> float:
        return 12 + 420 * math.sqrt(mem / max_mem)

    mode = report._mode(served)

    def rec(p: TunePoint) -> float:
        return p.recall_in(mode)

    def lat(p: TunePoint) -> float:
        return p.latency_in(mode)

    best = {p.factory: p for p in report.by_factory(mode)}
    by_factory: dict[str, list[TunePoint]] = {}
    for p in report.points:
        # for re-ranking indexes, draw only the k_factor chain of the index's best setting
        if "k_factor" in p.params and p.params["k_factor"] != best[p.factory].params.get("k_factor"):
            continue
        by_factory.setdefault(p.factory, []).append(p)
    for factory, pts in by_factory.items():
        colour = colours[pts[0].family]
        ax.plot([lat(p) for p in pts], [rec(p) for p in pts], "-", color=colour, alpha=0.45, lw=1)
        ax.scatter([lat(p) for p in pts], [rec(p) for p in pts], s=[size(p.memory_bytes) for p in pts],
                   color=colour, alpha=0.5, edgecolors="white", linewidths=0.5)
        b = best[factory]
        ax.annotate(factory, (lat(b), rec(b)), textcoords="offset points", xytext=(4, 3), fontsize=6,
                    color=colour, alpha=0.9)
    ax.axhline(report.target_recall, color="grey", ls="--", lw=1)
    ax.text(min(lat(p) for p in report.points), report.target_recall,
            f" target {report.target_recall:g}", va="bottom", fontsize=8, color="grey")
    marks = [("original: ", report.original, "X", "black", (10, -24)),
             ("pick: ", report.pick(mode), "*", "red", (-40, -34)),
             ("build-index default: ", report.current_default, "D", "#6a3d9a", (-150, -26))]
    for prefix, p, marker, colour, offset in marks:
        if p is None:
            continue
        ax.scatter([lat(p)], [rec(p)], marker=marker, s=200, color=colour, zorder=5)
        ax.annotate(prefix + p.label + f"\n({p.memory_ratio:.3f} x Flat memory)", (lat(p), rec(p)),
                    textcoords="offset points", xytext=offset, fontsize=8, color=colour, zorder=6,
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(
        lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))
    ax.set_xlabel(f"single-query latency, median ms ({report.threads or 'default'} Faiss thread(s), log scale)")
    ax.set_ylabel(f"recall@{report.k} vs exact search" + (
        f", served (index candidates x{report.rerank} re-ranked exactly)" if mode else ", index alone"))
    ax.set_ylim(max(0.0, min(rec(p) for p in report.points) - 0.05), 1.01)
    ax.grid(True, which="both", alpha=0.25)
    handles = [Line2D([0], [0], marker="o", ls="", color=colours[f], label=f, markersize=7) for f in families]
    for frac in (1.0, 0.25, 1 / 16):
        handles.append(Line2D([0], [0], marker="o", ls="", color="#cccccc",
                              markersize=math.sqrt(size(frac * report.flat_bytes)),
                              label=f"memory {_frac(frac) if frac < 1 else '1'} x Flat"))
    ax.legend(handles=handles, fontsize=7, loc="lower right", ncol=2, framealpha=0.85, labelspacing=1.1)
    ax.set_title(title or f"{report.n_vectors:,} vectors, {report.dim}-d: recall@{report.k} / latency / memory "
                 "(marker area ~ index memory)", fontsize=10)
    fig.tight_layout()
    if path is not None:
        from . import _io  # noqa: PLC0415

        path = Path(path)
        with _io.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        logger.info("Wrote %s", path)
    return fig


# --------------------------------------------------------------------------- synthetic data
def clustered_chunks(n: int, d: int, *, n_clusters: int | None = None, rank: int = 16, spread: float = 0.6,
                     noise: float = 0.25, relu: bool = True, seed: int = 0,
                     chunk_size: int = 4096) -> Iterator[np.ndarray]:
    """Realistic synthetic embeddings, streamed in chunks: a seeded Gaussian mixture, L2-normalised.

    Each cluster has a random centre (norm 1), a random ``rank``-dimensional
    subspace along which its members vary (norm about ``spread``), and
    isotropic noise (norm about ``noise``). Cluster sizes are uneven (drawn
    from a Dirichlet distribution). With ``relu`` the vectors are clipped at
    zero before normalising, like the ReLU outputs of CNN layers.

    Args:
        n: Number of vectors.
        d: Dimension.
        n_clusters: Mixture components (default: about ``sqrt(n) / 2``).
        rank: Dimension of each cluster's subspace of variation.
        spread: Scale of the within-cluster variation.
        noise: Scale of the isotropic noise.
        relu: Clip at zero before normalising.
        seed: Seed; the same arguments always give the same vectors.
        chunk_size: Rows per yielded chunk.

    Yields:
        float32 arrays of shape ``(m, d)`` with unit rows, ``n`` rows in all.
    """
    if n < 1 or d < 2:
        raise ValueError(f"Need n >= 1 and d >= 2, got n={n}, d={d}")
    c = n_clusters or max(2, int(round(math.sqrt(n) / 2)))
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((c, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((c, rank, d)).astype(np.float32) * (spread / math.sqrt(d))
    weights = rng.dirichlet(np.full(c, 2.0))
    labels = rng.choice(c, size=n, p=weights)
    for i, start in enumerate(range(0, n, chunk_size)):
        lab = labels[start:start + chunk_size]
        r = np.random.default_rng([seed, i])
        z = r.standard_normal((len(lab), rank)).astype(np.float32)
        x = centres[lab].copy()
        for cl in np.unique(lab):
            rows = np.flatnonzero(lab == cl)
            x[rows] += z[rows] @ bases[cl]
        x += r.standard_normal((len(lab), d)).astype(np.float32) * (noise / math.sqrt(d))
        if relu:
            np.maximum(x, 0, out=x)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        yield (x / np.maximum(norms, 1e-12)).astype(np.float32)


def clustered_vectors(n: int, d: int, **kwargs: Any) -> np.ndarray:
    """All of :func:`clustered_chunks` as one ``(n, d)`` float32 array."""
    return np.concatenate(list(clustered_chunks(n, d, **kwargs)))
