"""End-to-end benchmark of the sentiment enrichment with the local (VADER) provider.

    python bench/bench_pipeline.py [--posts 100000] [--days 1] [--probe-posts 3000] [--keep]

Seeds ``--posts`` generated posts over ``--days`` days (plus two small "probe" days after them) into a
fresh temporary SOCIAL_ENRICH_HOME, in a separate process so seeding does not count towards peak
memory. Then, in this process, materializes through Dagster (``execute_in_process``, ephemeral
instance) and reports posts/s end to end, the scan / score / write shares, the model's own time vs
the pipeline around it, the process's peak RSS, and how the write cost behaves as the target grows.

Runs, in order (all in one process, so ratios compare like with like on a noisy machine):
  1. probe day A, 3k posts, into an empty target        (also warms up imports and Dagster)
  2. every main day, first write                        (the headline figures; days=1: all N posts)
  3. the largest main day again through Dagster         (a rewrite)
  4. the largest main day again via enrich_partition()  (the same work without Dagster)
  5. probe day B, 3k posts, into a target of N rows     (first write of a small day)
  6. probe day A again, into a target of N rows         (rewrite of a small day)
  7. VADER alone on the largest day's texts, and the hash alone on its fields (no I/O)

Timing inside the runs comes from thin wrappers installed by this script (nothing in the package
is changed): the model's score() per post, LocalProvider.score, score_posts, read_partition,
result_rows, open_target, write_day and pyiceberg's Transaction.delete / overwrite / commit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

GOAL_RATIO = 1.0  # pipeline around the model / model
GOAL_RSS_MIB = 1024.0
CLEARED_ENV = (
    "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_DEPLOYMENT",
    "SOCIAL_ENRICH_JOBS_DIR", "SOCIAL_ENRICH_WAREHOUSE", "DAGSTER_HOME",
)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- Seeding (runs in its own process) -----------------------------------------------------


def seed_main(spec: dict) -> None:
    """Child process: seed the main days, then two probe days after them; print a JSON summary."""
    from social_enrich import demo
    from social_enrich.config import load_job_config
    from social_enrich.environment import BUILTIN_JOBS_DIR
    from social_enrich.lakehouse.catalog import open_catalog

    job = load_job_config(BUILTIN_JOBS_DIR / "sentiment.yaml")
    catalog = open_catalog(job.connector)
    start = dt.date.fromisoformat(spec["start"])
    began = time.perf_counter()
    main = demo.seed_gold_tables(catalog, posts=spec["posts"], days=spec["days"], start=start)
    # Two separate one-day seeds, so neither probe day holds updates of the other's posts.
    probes = [
        demo.seed_gold_tables(
            catalog, posts=spec["probe_posts"], days=1, start=start + dt.timedelta(days=spec["days"] + n),
            seed=8 + n, replace=False,
        )
        for n in range(2)
    ]
    print(json.dumps({
        "seconds": time.perf_counter() - began,
        "fact_rows": main.fact_rows + sum(p.fact_rows for p in probes),
        "dim_rows": main.dim_rows + sum(p.dim_rows for p in probes),
        "main_days": [d.isoformat() for d in main.days],
        "probe_days": [p.days[0].isoformat() for p in probes],
        "peak_rss_mib": peak_rss_mib(),
    }))


# --- Instrumentation -----------------------------------------------------------------------


class Probe:
    """Accumulates wall time per instrumented call, keyed by the path of enclosing calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.stack: list[str] = []
        self.model_seconds = 0.0
        self.model_calls = 0
        self.gc_seconds = 0.0
        self.gc_full = 0
        self._gc_began = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_began = time.perf_counter()
        else:
            self.gc_seconds += time.perf_counter() - self._gc_began
            self.gc_full += info["generation"] == 2

    def reset(self) -> None:
        self.seconds.clear()
        self.model_seconds, self.model_calls = 0.0, 0
        self.gc_seconds, self.gc_full = 0.0, 0

    def snapshot(self) -> dict[str, float]:
        return {**self.seconds, "model": self.model_seconds, "model_calls": self.model_calls,
                "gc": self.gc_seconds, "gc_full": self.gc_full}

    def wrap(self, owner: object, attr: str, name: str) -> None:
        original = getattr(owner, attr, None)
        if original is None:  # renamed in the package: leave that figure at 0 rather than fail the bench
            print(f"note: cannot time {name}: {getattr(owner, '__name__', owner)}.{attr} no longer exists", flush=True)
            return
        probe = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            probe.stack.append(name)
            key = "/".join(probe.stack)
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                probe.seconds[key] += time.perf_counter() - began
                probe.stack.pop()

        setattr(owner, attr, timed)

    def wrap_model(self, cls: type) -> None:
        original = cls.score
        probe = self

        @functools.wraps(original)
        def timed(self_, fields, text):
            began = time.perf_counter()
            try:
                return original(self_, fields, text)
            finally:
                probe.model_seconds += time.perf_counter() - began
                probe.model_calls += 1

        cls.score = timed


def install_probe() -> Probe:
    import pyiceberg.table as iceberg_table

    import social_enrich.enrichment as enrichment
    import social_enrich.lakehouse.target_table as target_table
    from social_enrich.inference.local_sentiment import LocalProvider, VaderSentimentModel

    probe = Probe()
    probe.wrap_model(VaderSentimentModel)
    probe.wrap(LocalProvider, "score", "provider")
    for name in ("read_partition", "score_posts", "result_rows", "open_target", "write_day"):
        probe.wrap(enrichment, name, name)
    probe.wrap(target_table, "conform", "conform")
    probe.wrap(iceberg_table.DataScan, "to_arrow", "to_arrow")
    probe.wrap(iceberg_table.Transaction, "delete", "tx.delete")
    probe.wrap(iceberg_table.Transaction, "overwrite", "tx.overwrite")
    probe.wrap(iceberg_table.Transaction, "commit_transaction", "tx.commit")
    return probe


class StderrToFile:
    """Send fd 2 (Dagster's console log, warnings) to a file while runs are going."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.file = open(self.path, "a")
        os.dup2(self.file.fileno(), 2)

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.close()


# --- Materialization (this process) --------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, home: Path) -> None:
        import dagster as dg

        from social_enrich.config import load_job_config
        from social_enrich.definitions import build_definitions
        from social_enrich.environment import BUILTIN_JOBS_DIR
        from social_enrich.lakehouse.catalog import open_catalog

        self.args, self.home, self.dg = args, home, dg
        self.log_path = home / "dagster.log"
        self.job = load_job_config(BUILTIN_JOBS_DIR / "sentiment.yaml")
        self.catalog = open_catalog(self.job.connector)
        self.job_def = build_definitions().resolve_implicit_global_asset_job_def()
        self.instance = dg.DagsterInstance.ephemeral()
        self.probe = install_probe()
        self.runs: list[dict] = []

    def target_state(self) -> tuple[int, int, int]:
        """The target's rows, snapshots in its history, and live data files (0s before it exists)."""
        from pyiceberg.exceptions import NoSuchTableError

        from social_enrich.lakehouse.snapshots import current_snapshot_info

        try:
            table = self.catalog.load_table(self.job.connector.target.identifier)
        except NoSuchTableError:
            return 0, 0, 0
        info = current_snapshot_info(table)
        return info.total_records, len(table.metadata.snapshots), info.total_data_files

    def dagster(self, day: str, label: str) -> dict:
        dg = self.dg
        before, snapshots, files = self.target_state()
        self.probe.reset()
        began = time.perf_counter()
        with StderrToFile(self.log_path):
            result = self.job_def.execute_in_process(
                partition_key=day,
                asset_selection=[dg.AssetKey(self.job.asset_name)],
                instance=self.instance,
                run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
                raise_on_error=False,
            )
        wall = time.perf_counter() - began
        materialization = next(iter(result.asset_materializations_for_node(self.job.asset_name)), None)
        if not result.success or materialization is None:
            raise RuntimeError(f"Dagster run for {day} failed; see {self.log_path}")
        meta = {k: v.value for k, v in materialization.metadata.items()}
        run = {
            "label": label, "day": day, "via": "dagster", "wall": wall, "target_before": before,
            "snapshots_before": snapshots, "files_before": files,
            "posts": meta["posts_touched"], "scan": meta["seconds/scan"], "score": meta["seconds/score"],
            "write": meta["seconds/write"], "asset": meta["duration_seconds"], "meta": meta,
            "probe": self.probe.snapshot(), "peak_rss_mib": peak_rss_mib(), "rss_mib": current_rss_mib(),
        }
        return self._record(run)

    def direct(self, day: str, label: str) -> dict:
        from social_enrich.enrichment import enrich_partition
        from social_enrich.inference.azure_openai import AzureOpenAIResource
        from social_enrich.inference.selection import build_provider

        before, snapshots, files = self.target_state()
        self.probe.reset()
        began = time.perf_counter()
        with StderrToFile(self.log_path):
            provider = build_provider(self.job, AzureOpenAIResource())
            report = enrich_partition(self.job, dt.date.fromisoformat(day), self.catalog, provider)
        wall = time.perf_counter() - began
        run = {
            "label": label, "day": day, "via": "enrich_partition", "wall": wall, "target_before": before,
            "snapshots_before": snapshots, "files_before": files,
            "posts": report.posts, **report.seconds, "asset": wall, "meta": {},
            "probe": self.probe.snapshot(), "peak_rss_mib": peak_rss_mib(), "rss_mib": current_rss_mib(),
        }
        return self._record(run)

    def _record(self, run: dict) -> dict:
        self.runs.append(run)
        print(
            f"  {run['label']:<40} {run['day']}  {run['posts']:>7,} posts  {run['wall']:6.2f} s "
            f"(scan {run['scan']:.2f}  score {run['score']:.2f}  write {run['write']:.2f})  "
            f"target before {run['target_before']:>7,} rows/{run['snapshots_before']:>3} snapshots/{run['files_before']:>3} files  "
            f"peak RSS {run['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
        return run

    def offline(self, day: str) -> dict:
        """VADER alone, and the field building / hashing alone, on the same posts as the day's run."""
        from social_enrich.enrichment import fields_to_send, input_hash
        from social_enrich.inference.local_sentiment import VaderSentimentModel
        from social_enrich.lakehouse.partition_scan import read_partition

        posts = read_partition(self.catalog, self.job, dt.date.fromisoformat(day)).posts
        text_field = self.job.inference.text_field
        texts = [t for t in posts[text_field].to_pylist() if isinstance(t, str)]
        model = VaderSentimentModel()
        self.probe.reset()  # the class is wrapped: read the in-wrapper time, and the loop's own
        began = time.perf_counter()
        for text in texts:
            model.score({}, text)
        model_loop = time.perf_counter() - began
        model_wrapped = self.probe.model_seconds

        send = fields_to_send(self.job, posts.column_names)
        began = time.perf_counter()
        fields = posts.select(send).to_pylist()
        to_pylist = time.perf_counter() - began
        began = time.perf_counter()
        for f in fields:
            input_hash(f)
        hashing = time.perf_counter() - began
        return {
            "texts": len(texts), "model_loop": model_loop, "model_wrapped": model_wrapped,
            "to_pylist": to_pylist, "hash": hashing, "posts": posts.num_rows, "fields": send,
        }


def _sum(probe: dict, prefix: str) -> float:
    """Time of calls named `prefix`, wherever they were nested (for the tx.* and to_arrow calls)."""
    return sum(v for k, v in probe.items() if k == prefix or k.endswith("/" + prefix))


def _top(probe: dict, path: str) -> float:
    return probe.get(path, 0.0)


def report(args: argparse.Namespace, seed: dict, bench: Bench, offline: dict, rss_after_imports: float, total: float) -> None:
    runs = bench.runs
    mains = [r for r in runs if r["label"].startswith("first write")]
    rewrite = next(r for r in runs if r["label"].startswith("rewrite (Dagster)"))
    direct = next(r for r in runs if r["via"] == "enrich_partition")
    probe_a0, probe_b, probe_a1 = (next(r for r in runs if r["label"].startswith(p)) for p in ("probe A", "probe B", "probe A again"))
    posts = sum(r["posts"] for r in mains)
    wall = sum(r["wall"] for r in mains)
    asset = sum(r["asset"] for r in mains)
    scan, score, write = (sum(r[p] for r in mains) for p in ("scan", "score", "write"))
    probes = [r["probe"] for r in mains]
    p = defaultdict(float)
    for one in probes:
        for k, v in one.items():
            p[k] += v
    model = p["model"]
    provider = _top(p, "score_posts/provider")
    result_rows = _top(p, "result_rows")
    open_target = _top(p, "open_target")
    write_day = _top(p, "write_day")
    phases = scan + score + write
    pipeline = phases - model
    ratio = pipeline / model if model else float("inf")
    ratio_dagster = (wall - model) / model if model else float("inf")
    peak = peak_rss_mib()
    biggest = max(mains, key=lambda r: r["posts"])
    nproc = os.cpu_count()

    def pct(x: float) -> str:
        return f"{100 * x / wall:.0f}%"

    def ok(flag: bool) -> str:
        return "OK" if flag else "MISSED"

    def write_line(what: str, run: dict) -> str:
        pr = run["probe"]
        return (
            f"  {what:<40} {run['posts']:>7,} posts into {run['target_before']:>7,} rows ({run['snapshots_before']:>3} snapshots, "
            f"{run['files_before']:>3} files): write {run['write']:.3f} s "
            f"(rows {_top(pr, 'result_rows'):.3f}, open {_top(pr, 'open_target'):.3f}, "
            f"key scan {_sum(pr, 'write_day/to_arrow'):.3f}, delete moved {_top(pr, 'write_day/tx.delete'):.3f}, "
            f"overwrite {_sum(pr, 'tx.overwrite'):.3f}, commit {_sum(pr, 'tx.commit'):.3f})"
        )

    print()
    print("=" * 100)
    print(f"bench_pipeline: {args.posts:,} posts over {args.days} day(s), local model {runs[0]['meta'].get('model', '?')}, "
          f"{nproc} CPU(s), seeded in {seed['seconds']:.1f} s (separate process), whole bench {total:.0f} s")
    if len(mains) > 1:
        print(f"per partition (first write): {len(mains)} partitions, posts min/median/max "
              f"{min(r['posts'] for r in mains):,} / {sorted(r['posts'] for r in mains)[len(mains) // 2]:,} / "
              f"{max(r['posts'] for r in mains):,}; Dagster wall per partition median "
              f"{sorted(r['wall'] for r in mains)[len(mains) // 2]:.2f} s")
    print(f"end to end (Dagster run{'s' if len(mains) > 1 else ''}, first write): {posts:,} posts in {wall:.2f} s = "
          f"{posts / wall:,.0f} posts/s")
    print(f"  asset body {asset:.2f} s; Dagster framework overhead {wall - asset:.2f} s; "
          f"enrich_partition without Dagster ({direct['day']}, rewrite) {direct['wall']:.2f} s = {direct['posts'] / direct['wall']:,.0f} posts/s "
          f"vs the same rewrite through Dagster {rewrite['wall']:.2f} s")
    print(f"shares of the end-to-end time: scan {pct(scan)}  score {pct(score)}  write {pct(write)}  "
          f"other (Dagster, catalog open, provider build) {pct(wall - phases)}")
    print(f"  scan  {scan:6.2f} s  read touched keys, latest version per source, join")
    print(f"  score {score:6.2f} s  = model {model:.2f} + validation/ScoreResult {provider - model:.2f} "
          f"+ fields/hash/PostToScore {score - provider:.2f}   (offline: to_pylist {offline['to_pylist']:.2f}, sha256 of JSON {offline['hash']:.2f})")
    print(f"  write {write:6.2f} s  = result rows {result_rows:.2f} + open target {open_target:.2f} + write_day {write_day:.2f} "
          f"(conform {_sum(p, 'conform'):.2f}, key scan {_sum(p, 'write_day/to_arrow'):.2f}, delete moved {_top(p, 'write_day/tx.delete'):.2f}, "
          f"overwrite {_sum(p, 'tx.overwrite'):.2f}, commit {_sum(p, 'tx.commit'):.2f}) + other {write - result_rows - open_target - write_day:.2f}")
    if len(mains) >= 10:
        head, tail = mains[:5], mains[-5:]

        def mean(rs: list[dict], key: str) -> float:
            return sum(r[key] for r in rs) / len(rs)

        def mean_probe(rs: list[dict], name: str) -> float:
            return sum(_sum(r["probe"], name) for r in rs) / len(rs)

        print(f"  write per partition, first 5 vs last 5 days: {mean(head, 'write'):.3f} s -> {mean(tail, 'write'):.3f} s "
              f"(posts {mean(head, 'posts'):,.0f} -> {mean(tail, 'posts'):,.0f}; target {mean(head, 'target_before'):,.0f} -> "
              f"{mean(tail, 'target_before'):,.0f} rows, {mean(head, 'snapshots_before'):.0f} -> {mean(tail, 'snapshots_before'):.0f} snapshots, "
              f"{mean(head, 'files_before'):.0f} -> {mean(tail, 'files_before'):.0f} files; key scan {mean_probe(head, 'write_day/to_arrow'):.3f} -> "
              f"{mean_probe(tail, 'write_day/to_arrow'):.3f}, delete moved {mean_probe(head, 'write_day/tx.delete'):.3f} -> "
              f"{mean_probe(tail, 'write_day/tx.delete'):.3f}, overwrite {mean_probe(head, 'tx.overwrite'):.3f} -> {mean_probe(tail, 'tx.overwrite'):.3f})")
    print(f"model vs pipeline: model (VADER, timed inside the run, {int(p['model_calls']):,} calls) {model:.2f} s; "
          f"pipeline around it (scan, join, hash, validate, upsert) {pipeline:.2f} s")
    # The model can run slower inside the run than alone (a larger heap, the pipeline's garbage);
    # charging the model only its standalone speed gives the stricter ratio.
    alone = offline["model_loop"] / offline["texts"] * p["model_calls"] if offline["texts"] else model
    strict = (phases - alone) / alone if alone else float("inf")
    print(f"  pipeline/model = {ratio:.2f} (goal < {GOAL_RATIO:g}) {ok(ratio < GOAL_RATIO)}   "
          f"[counting Dagster overhead too: {ratio_dagster:.2f}; charging the model only its standalone time "
          f"{alone:.2f} s: {strict:.2f} {ok(strict < GOAL_RATIO)}]")
    print(f"  VADER alone on the same {offline['texts']:,} texts of {biggest['day']}: {offline['model_loop']:.2f} s "
          f"({offline['texts'] / offline['model_loop']:,.0f} posts/s); in that day's run: {biggest['probe']['model']:.2f} s; "
          f"GC pauses in the run(s): {p['gc']:.2f} s ({int(p['gc_full'])} full collections)")
    print(f"peak RSS of the materialization process: {peak:.0f} MiB (goal < {GOAL_RSS_MIB:.0f} MiB) {ok(peak < GOAL_RSS_MIB)}   "
          f"[after imports {rss_after_imports:.0f}; after first write {max(r['peak_rss_mib'] for r in mains):.0f}; "
          f"after Dagster rewrite {rewrite['peak_rss_mib']:.0f}; after enrich_partition {direct['peak_rss_mib']:.0f}; "
          f"seeding process {seed['peak_rss_mib']:.0f}]")
    print("write cost vs target size:")
    print(write_line("small day A into an empty target", probe_a0))
    print(write_line(f"small day B after the main day(s)", probe_b))
    print(write_line(f"small day A rewritten", probe_a1))
    print(write_line(f"largest day, first write", biggest))
    print(write_line(f"largest day, rewrite (Dagster)", rewrite))
    print(write_line(f"largest day, rewrite (enrich_partition)", direct))
    print(f"reproduce: python bench/bench_pipeline.py --posts {args.posts} --days {args.days} --probe-posts {args.probe_posts}")
    print("=" * 100)


def pick_start(days: int) -> dt.date:
    """A fixed first day when it fits; the job's daily partitions end yesterday, and 2 probe days follow."""
    fixed = dt.date(2026, 1, 1)
    latest_first = dt.date.today() - dt.timedelta(days=days + 3)
    return min(fixed, latest_first)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=100_000, help="posts to seed on the main days (default 100000)")
    parser.add_argument("--days", type=int, default=1, help="main days the posts are spread over (default 1)")
    parser.add_argument("--probe-posts", type=int, default=3000, help="posts on each of the 2 small probe days (default 3000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary SOCIAL_ENRICH_HOME")
    parser.add_argument("--json", type=Path, help="also write every run's raw timings to this JSON file")
    parser.add_argument("--_seed", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._seed:
        seed_main(json.loads(args._seed))
        return 0
    if args.posts < 1 or args.days < 1 or args.probe_posts < 1:
        parser.error("--posts, --days and --probe-posts must be at least 1")

    started = time.perf_counter()
    home = Path(tempfile.mkdtemp(prefix="social_enrich_bench_"))
    start = pick_start(args.days)
    os.environ["SOCIAL_ENRICH_HOME"] = str(home)
    os.environ["SOCIAL_ENRICH_START_DATE"] = start.isoformat()
    for name in CLEARED_ENV:
        os.environ.pop(name, None)
    keep = args.keep
    try:
        print(f"state: {home}; seeding {args.posts:,} posts over {args.days} day(s) from {start} "
              f"+ 2 probe days of {args.probe_posts:,} posts, in a separate process ...", flush=True)
        spec = {"posts": args.posts, "days": args.days, "probe_posts": args.probe_posts, "start": start.isoformat()}
        done = subprocess.run(
            [sys.executable, __file__, "--_seed", json.dumps(spec)], capture_output=True, text=True, env=os.environ.copy()
        )
        if done.returncode:
            sys.stderr.write(done.stderr[-4000:])
            raise RuntimeError("seeding failed")
        seed = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  seeded in {seed['seconds']:.1f} s: {seed['fact_rows']:,} fact rows, {seed['dim_rows']:,} detail rows, "
              f"main days {seed['main_days'][0]}..{seed['main_days'][-1]}, probe days {seed['probe_days']}", flush=True)

        with StderrToFile(home / "dagster.log"):  # Dagster's beta warnings while building definitions
            bench = Bench(args, home)
        rss_after_imports = peak_rss_mib()
        print(f"materializing (Dagster log: {bench.log_path}); peak RSS after imports {rss_after_imports:.0f} MiB", flush=True)
        probe_a, probe_b = seed["probe_days"]
        bench.dagster(probe_a, "probe A, empty target (warm-up)")
        for day in seed["main_days"]:
            bench.dagster(day, "first write")
        biggest = max((r for r in bench.runs if r["label"] == "first write"), key=lambda r: r["posts"])["day"]
        bench.dagster(biggest, "rewrite (Dagster)")
        bench.direct(biggest, "rewrite (enrich_partition, no Dagster)")
        bench.dagster(probe_b, "probe B, new day after main")
        bench.dagster(probe_a, "probe A again (rewrite)")
        print("timing VADER alone and the hash alone on the largest day ...", flush=True)
        offline = bench.offline(biggest)
        report(args, seed, bench, offline, rss_after_imports, time.perf_counter() - started)
        if args.json:
            raw = {"args": {k: v for k, v in vars(args).items() if k not in ("json", "_seed")}, "seed": seed,
                   "runs": bench.runs, "offline": offline, "peak_rss_mib": peak_rss_mib()}
            args.json.write_text(json.dumps(raw, indent=1, default=str))
    except BaseException:
        keep = True
        print(f"failed; state kept in {home}", file=sys.stderr)
        raise
    finally:
        if keep:
            print(f"state kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
