"""What a tuning sweep measured: :class:`TunePoint` per index and setting, :class:`TuneReport` for the sweep,
its choices (the smallest index that reaches the target, the best within memory budgets) and its tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from .._util.types import JSON
from ..errors import InputError
from ..index import choose_nprobe

__all__ = ["TunePoint", "TuneReport", "pareto_points", "pick_point", "human_bytes", "build_index_call", "PARAM_NAMES",
           "ORIGINAL_NPROBE"]

#: Search parameters, and their command-line option names.
PARAM_NAMES = {"nprobe": "nprobe", "efSearch": "ef_search", "k_factor": "k_factor"}
#: nprobe of the original design.
ORIGINAL_NPROBE = 4


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

    def to_dict(self) -> dict[str, object]:
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
    <similar_images.store.Database.search>` serves it by default
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

    def _decision(self, served: bool) -> dict[str, object]:
        def d(p: TunePoint | None) -> dict[str, object] | None:
            return p.to_dict() if p else None

        return {"chosen": d(self.pick(served)), "fastest": d(self.pick(served, by="latency")),
                "budgets": {f"{frac:g}": d(p) for frac, p in self.budgets(served).items()}}

    def to_dict(self) -> dict[str, object]:
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
    def from_dict(cls, data: JSON) -> TuneReport:
        """Rebuild a report from :meth:`to_dict`'s output (e.g. a saved ``--json`` file), to re-plot or re-decide
        without measuring again.

        Raises:
            ValueError: If ``data`` is not a tuning report.
        """
        data = data.get("tune", data)  # bench_tune.py nests the report
        if not isinstance(data, dict) or "points" not in data or "flat_bytes" not in data:
            raise InputError("Not a tuning report: expected the output of TuneReport.to_dict() (the JSON a tuning "
                             "run saves)", setting="data", expected="TuneReport.to_dict()")
        point_fields = set(TunePoint.__dataclass_fields__)
        points = [TunePoint(**{k: v for k, v in p.items() if k in point_fields}) for p in data["points"]]
        names = ("n_vectors", "dim", "k", "n_queries", "queries", "target_recall", "max_latency_ms", "threads",
                 "flat_bytes", "default_factory", "tune_seconds", "original_factory", "default_nprobe_cap",
                 "rerank", "served")
        fields = {k: data[k] for k in names if k in data}
        fractions = tuple(float(f) for f in (data.get("budgets") or {})) or (0.25, 0.125)
        return cls(points=points, skipped=[(s["factory"], s["reason"]) for s in data.get("skipped", [])],
                   memory_fractions=fractions, **fields)

    def format_table(self, all_points: bool = False, *, apply: Callable[[TunePoint], str] | None = None) -> str:
        """A plain-text table (one row per index, or every setting) and the decision.

        Args:
            all_points: One row per setting instead of one per index.
            apply: How the pick is applied, as :meth:`summary_lines` says.
        """
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
                         f"{p.p99_ms:>9.3f}{p.batch_ms:>9.3f}{served}{human_bytes(p.memory_bytes):>11}"
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
        lines.extend(self.summary_lines(apply=apply))
        return "\n".join(lines)

    def summary_lines(self, *, apply: Callable[[TunePoint], str] | None = None) -> list[str]:
        """The decision in a few sentences, for the index alone and, when measured, as served.

        Args:
            apply: How to apply a pick, in the caller's terms (the command line gives its command); by default
                the call of :meth:`~similar_images.store.Database.build_index` that builds it.
        """
        apply = apply or build_index_call
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
                             f"{chosen.latency_in(served):.3f} ms, {human_bytes(chosen.memory_bytes)} = "
                             f"{chosen.memory_ratio:.3f} x Flat")
                if served == self.served:
                    lines.append("    apply with: " + apply(chosen))
            else:
                best = max(self.points, key=lambda p: p.recall_in(served)) if self.points else None
                lines.append(f"  No setting reaches {cond}" + (
                    f"; best recall {best.recall_in(served):.4f} ({best.label})" if best else ""))
            if fastest and fastest is not chosen:
                lines.append(f"  Fastest with {cond}: {fastest.label}: recall {fastest.recall_in(served):.4f}, "
                             f"{fastest.latency_in(served):.3f} ms, {fastest.memory_ratio:.3f} x Flat")
            for frac, p in self.budgets(served).items():
                if p is None:
                    lines.append(f"  Within {fraction_label(frac)} of Flat's memory: nothing fits")
                else:
                    lines.append(f"  Best recall within {fraction_label(frac)} of Flat's memory: "
                                 f"{p.recall_in(served):.4f} "
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
                       f"{human_bytes(p.memory_bytes)} | {p.memory_ratio:.3f} | {p.build_seconds:.1f} |")
        return "\n".join(out)


def human_bytes(n: float) -> str:
    """A size in bytes for people: ``512 B``, ``70.2 KB``, ``18.2 MB``."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def fraction_label(x: float) -> str:
    inv = 1 / x if x else 0
    return f"1/{inv:g}" if x and abs(inv - round(inv)) < 1e-9 else f"{x:g}"


def build_index_call(p: TunePoint) -> str:
    """The call that builds the index of a tuning point: ``db.build_index(IndexConfig(factory=..., nprobe=...),
    force=True)``."""
    params = "".join(f", {PARAM_NAMES[name]}={value}" for name, value in p.params.items())
    return f"db.build_index(IndexConfig(factory={p.factory!r}{params}), force=True)"


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
