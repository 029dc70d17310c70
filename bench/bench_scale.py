"""Scale benchmark: write cost vs target size, peak RSS of a very large day, re-run of an unchanged day.

    python bench/bench_scale.py [--quick] [--only 1,2,3] [--keep]

Three measurements (issue 11, section 3), each in a fresh temporary SOCIAL_ENRICH_HOME, every
measured run in a fresh process (building and seeding in processes of their own, so they count
towards neither time nor memory):

1. write cost vs target size: targets of 100k, 1M and 10M rows built directly with pyarrow and
   pyiceberg (the built-in sentiment job's schema, appends of 10 contiguous days: one data file per
   day; then maintained as the daily maintenance job does: manifests merged, snapshots expired), in two layouts: (A) rows spread over 365 partition days, so the days grow with the target;
   (B) days of 10,000 rows, so the target grows by days (10, 100, 1,000 days). Then ``write_days`` of one new day of 10,000 posts,
   10% of them existing posts whose rows live on the 2 days before (their earlier versions' days,
   so ``may_live_on`` is the day and those 2, and 1,000 rows move). After one warm-up write per
   target, 3 timed writes per target, interleaved across the targets; each is rolled back to the
   built snapshot, so all are the same write with the same moves. Median seconds per target. The
   moved posts' old days are rewritten whole (copy-on-write; pyiceberg 0.12 writes no delete
   files), so in (A) the write grows with the size of those days, not with the table.
2. peak RSS of enriching a 1,000,000-post day with the local model (VADER): ``enrich_days`` with
   ``LocalProvider(VaderSentimentModel(), Sentiment)``; RSS after imports, the peak at the end of
   each phase, and the seconds per phase.
3. re-run of an unchanged 100,000-post day through Azure OpenAI (the loopback emulator in its own
   process: no latency, no faults, a high quota): a first run fills the response cache and the
   target, then a re-run of the unchanged day: its seconds per phase and its requests (the
   provider's count and the emulator's); then the same re-run with the response cache file deleted
   first (it is refilled from the target, ``answers_in_target``).

``--quick``: targets of 10k/100k/1M rows, a 200,000-post day, a 20,000-post re-run.
Goals: largest/smallest write <= 1.5x; peak RSS <= 600 MiB; re-run <= 2 s with 0 requests.
Timings are printed, never asserted: the machine may be shared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ASSET = "social_media_sentiment"
GOAL_WRITE_RATIO = 1.5
GOAL_RSS_MIB = 600.0
GOAL_RERUN_SECONDS = 2.0
FULL = {"targets": (100_000, 1_000_000, 10_000_000), "rss_posts": 1_000_000, "rerun_posts": 100_000}
QUICK = {"targets": (10_000, 100_000, 1_000_000), "rss_posts": 200_000, "rerun_posts": 20_000}
WRITE_POSTS = 10_000  # posts of the new day written into each target
MOVED_POSTS = 1_000  # of which existing posts, living on the 2 days before: their rows move
TARGET_DAYS = 365  # layout A: a year of days, each day 1/365 of the target
DAY_ROWS = 10_000  # layout B: days of this many rows, as many as the target holds
DAYS_PER_APPEND = 10  # the targets are built 10 days per append, then maintained (merged, expired)
REPEATS = 3
LABELS = ("positive", "negative", "neutral", "mixed")
API_KEY = "bench-key-not-secret"
DEPLOYMENT = "bench-gpt-4o-mini"
EMULATOR_RPM, EMULATOR_TPM = 1_000_000, 1_000_000_000  # high enough never to throttle
DAY_US = 86_400 * 1_000_000
EPOCH = dt.date(1970, 1, 1)
# The embedded catalog, the built-in job only, no Azure unless set here, no Dagster instance.
CLEARED_ENV = ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_DEPLOYMENT", "AZURE_OPENAI_RPM",
               "AZURE_OPENAI_TPM", "OPENAI_SECRET_NAME", "SOCIAL_ENRICH_JOBS_DIR", "SOCIAL_ENRICH_WAREHOUSE", "DAGSTER_HOME")


# --- helpers shared by the parent and the child processes -------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def arrow_mib() -> dict[str, float]:
    import pyarrow as pa

    pool = pa.default_memory_pool()
    return {"now": pool.bytes_allocated() / 2**20, "max": pool.max_memory() / 2**20}


def sentiment_job():
    from social_enrich.config import discover_job_configs

    return next(j for j in discover_job_configs() if j.asset_name == ASSET)


def catalog_at(home: str):
    """The embedded catalog of the state folder ``home`` (several in one process, one per target)."""
    from social_enrich.lakehouse.catalog import open_catalog

    os.environ["SOCIAL_ENRICH_HOME"] = home
    return open_catalog()


def quiet_log():
    import logging

    log = logging.getLogger("bench_scale.run")
    log.setLevel(logging.ERROR)  # as bench_pipeline runs Dagster: no per-run chatter
    return log


def run_child(name: str, params: dict, env: dict | None = None) -> tuple[dict, float]:
    """Run ``name`` in a fresh interpreter; its figures come back as JSON in a file."""
    out = Path(params["home"]) / f"{name}.json"
    began = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", name, "--params", json.dumps({**params, "out": str(out)})],
                   check=True, env={**os.environ, "SOCIAL_ENRICH_HOME": params["home"], **(env or {})})
    return json.loads(out.read_text()), time.perf_counter() - began


def seed(home: Path, posts: int, day: dt.date) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "social_enrich", "seed", "--posts", str(posts), "--days", "1"], check=True,
                   stdout=subprocess.DEVNULL,
                   env={**os.environ, "SOCIAL_ENRICH_HOME": str(home), "SOCIAL_ENRICH_START_DATE": day.isoformat()})
    return time.perf_counter() - began


# --- 1. write cost vs target size ---------------------------------------------------------------


def random_uints(rng: random.Random, n: int, kind):
    """n random unsigned integers of ``kind`` (uint8/16/32), straight from random bytes."""
    import pyarrow as pa

    return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(rng.randbytes(n * kind.bit_width // 8))])


def sequence(first: int, n: int):
    """first, first + 1, ... as int64, without Python ints."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.add(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), n)), first - 1)


def hex_hashes(rng: random.Random, n: int):
    """n random 64-character hex strings (what input_hash holds), built without Python strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    digits = pa.array(list(b"0123456789abcdef"), pa.uint8())
    chars = pc.take(digits, pc.bit_wise_and(random_uints(rng, n * 64, pa.uint8()), 15))
    offsets = pc.multiply(sequence(0, n + 1), 64).cast(pa.int32())
    return pa.StringArray.from_buffers(n, offsets.buffers()[1], chars.buffers()[1])


def bulk_rows(table, job, keys, days, rng: random.Random):
    """Target rows for ``keys`` (int64) living on ``days`` (int32 epoch days), in bulk, cast to the table's schema."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from social_enrich.lakehouse.target_table import PARTITION_DATE, conform

    n = len(keys)
    stamp = pa.timestamp("us", tz="UTC")
    day_us = pc.multiply(days.cast(pa.int64()), DAY_US)

    def fraction():  # uniform in [0, 1]
        return pc.divide(random_uints(rng, n, pa.uint16()).cast(pa.float64()), 65535.0)

    def within(micros: int):  # uniform in [0, micros)
        return pc.floor(pc.multiply(random_uints(rng, n, pa.uint32()).cast(pa.float64()), micros / 2**32)).cast(pa.int64())

    rows = pa.table({
        job.connector.target.index_field: keys,
        "label": pc.take(pa.array(LABELS), pc.bit_wise_and(random_uints(rng, n, pa.uint8()), 3)),
        "score": pc.subtract(pc.multiply(fraction(), 2.0), 1.0),
        "confidence": fraction(),
        "model": pa.repeat(DEPLOYMENT, n),
        "prompt_version": pa.repeat(job.inference.prompt_version, n),
        "input_hash": hex_hashes(rng, n),
        "status": pa.repeat("ok", n),
        "error": pa.nulls(n, pa.string()),
        "input_truncated": pa.repeat(False, n),
        "source_update_time": pc.add(day_us, within(DAY_US)).cast(stamp),
        PARTITION_DATE: days.cast(pa.date32()),
        job.connector.target.datetime_field: pc.add(pc.add(day_us, DAY_US), within(3600 * 1_000_000)).cast(stamp),
    })
    return conform(rows, table)


def target_appends(rows: int, start: dt.date, n_days: int):
    """(keys, days) of each append of a ``rows``-row target, DAYS_PER_APPEND days each: rows - MOVED_POSTS
    spread evenly, in key order, over ``n_days`` days from ``start`` (each append a range of days, so
    each day is one file), plus the MOVED_POSTS highest keys on the last 2 days: the new day's posts
    with earlier versions, so every target has the same moves whatever its size."""
    import pyarrow as pa
    import pyarrow.compute as pc

    first = (start - EPOCH).days
    spread = rows - MOVED_POSTS
    bound = [-(-j * spread // n_days) for j in range(n_days + 1)]  # day j holds keys bound[j] + 1 .. bound[j + 1]
    appends = -(-n_days // DAYS_PER_APPEND)
    for g in range(appends):
        chosen = range(g * DAYS_PER_APPEND, min((g + 1) * DAYS_PER_APPEND, n_days))
        keys = sequence(bound[chosen[0]] + 1, bound[chosen[-1] + 1] - bound[chosen[0]])
        days = pa.concat_arrays([pa.repeat(pa.scalar(first + j, pa.int32()), bound[j + 1] - bound[j]) for j in chosen])
        if g == appends - 1:
            moved = sequence(spread + 1, MOVED_POSTS)
            keys = pa.concat_arrays([keys, moved])
            days = pa.concat_arrays([days, pc.add(pc.bit_wise_and(moved, 1), first + n_days - 2).cast(pa.int32())])
        yield keys, days


def child_build(params: dict) -> dict:
    """Build one target of params['rows'] rows in appends of DAYS_PER_APPEND contiguous days, then
    maintain it as the daily maintenance job would: manifests merged, the build's snapshots expired."""
    from pyiceberg.types import LongType

    from social_enrich.config import MaintenanceConfig
    from social_enrich.lakehouse.maintenance import run_maintenance
    from social_enrich.lakehouse.target_table import open_target

    job = sentiment_job()
    table = open_target(catalog_at(params["home"]), job, LongType())
    rng = random.Random(11)
    began = time.perf_counter()
    for keys, days in target_appends(params["rows"], dt.date.fromisoformat(params["start"]), params["days"]):
        table.append(bulk_rows(table, job, keys, days, rng))
    appended = time.perf_counter() - began
    run_maintenance(table, MaintenanceConfig(expire_snapshots_older_than_days=0, retain_last_snapshots=1),
                    dt.datetime.now(dt.timezone.utc))
    rows = table.scan(selected_fields=("post_key",)).count()
    return {"rows": rows, "seconds": appended, "files": len(list(table.scan().plan_files())),
            "manifests": len(table.current_snapshot().manifests(table.io))}


def child_writes(params: dict) -> dict:
    """Time write_days of the new day into every target: a warm-up each, then REPEATS rounds across the targets."""
    import pyarrow as pa
    from pyiceberg.types import LongType

    from social_enrich.lakehouse.target_table import open_target, partition_row_counts, write_days

    job = sentiment_job()
    new_day = dt.date.fromisoformat(params["new_day"])
    may_live_on = [new_day - dt.timedelta(days=2), new_day - dt.timedelta(days=1), new_day]
    rng = random.Random(12)
    targets = {}
    for rows, home in params["targets"]:
        began = time.perf_counter()
        table = open_target(catalog_at(home), job, LongType())
        opened = time.perf_counter() - began
        keys = pa.concat_arrays([sequence(rows + 1, WRITE_POSTS - MOVED_POSTS), sequence(rows - MOVED_POSTS + 1, MOVED_POSTS)])
        new_rows = bulk_rows(table, job, keys, pa.repeat(pa.scalar((new_day - EPOCH).days, pa.int32()), WRITE_POSTS), rng)
        targets[rows] = {"table": table, "rows": new_rows, "built": table.current_snapshot().snapshot_id, "open": opened,
                         "seconds": [], "read": partition_row_counts(table, may_live_on)}

    def write(rows: int) -> float:
        target = targets[rows]
        table = target["table"]
        began = time.perf_counter()
        stats = write_days(table, job, [new_day], target["rows"], may_live_on=may_live_on)
        seconds = time.perf_counter() - began
        # Correctness, not timing: every write is the same one, with its moves.
        assert stats.rows_written == WRITE_POSTS and stats.moved_from_other_days == MOVED_POSTS, stats
        table.manage_snapshots().set_current_snapshot(snapshot_id=target["built"]).commit()
        return seconds

    for rows in targets:
        targets[rows]["warmup"] = write(rows)
    for _ in range(REPEATS):
        for rows in targets:
            targets[rows]["seconds"].append(write(rows))
    return {str(rows): {"seconds": t["seconds"], "warmup": t["warmup"], "open": t["open"],
                        "rewritten_rows": sum(t["read"].values()) + WRITE_POSTS - MOVED_POSTS}
            for rows, t in targets.items()}


def layout_days(layout: str, rows: int) -> int:
    return TARGET_DAYS if layout == "A" else rows // DAY_ROWS


def measure_writes(home: Path, sizes: tuple[int, ...], new_day: dt.date, layout: str) -> dict:
    shape = f"{TARGET_DAYS} days" if layout == "A" else f"days of {DAY_ROWS:,} rows"
    print(f"1{layout}. write cost vs target size: building targets of {', '.join(f'{s:,}' for s in sizes)} rows "
          f"({shape}, {DAYS_PER_APPEND} days per append, then maintained), one process each ...", flush=True)
    homes = []
    for rows in sizes:
        target_home = home / f"target_{layout}_{rows}"
        target_home.mkdir()
        days = layout_days(layout, rows)
        start = new_day - dt.timedelta(days=days)
        built, _ = run_child("build", {"home": str(target_home), "rows": rows, "start": start.isoformat(), "days": days})
        print(f"   {built['rows']:>11,} rows: {built['files']} data files in {built['manifests']} manifests, "
              f"appended in {built['seconds']:.1f} s", flush=True)
        homes.append([rows, str(target_home)])
    print(f"   timing write_days of {WRITE_POSTS:,} posts ({MOVED_POSTS:,} moving from 2 earlier days): one warm-up and "
          f"{REPEATS} rounds across the targets, each write rolled back ...", flush=True)
    timed, _ = run_child("writes", {"home": str(home), "targets": homes, "new_day": new_day.isoformat()})
    return {int(rows): figures for rows, figures in timed.items()}


# --- 2. peak RSS of a very large day with the local model --------------------------------------


def child_local(params: dict) -> dict:
    import social_enrich.enrichment as enrichment
    from social_enrich.inference.local_sentiment import LocalProvider, VaderSentimentModel
    from social_enrich.inference.response_models import Sentiment

    after_imports = {"rss": current_rss_mib(), "peak": peak_rss_mib()}
    marks: dict[str, dict[str, float]] = {}

    def marked(name: str, function):
        def wrapper(*args, **kwargs):
            marks[f"{name} start"] = {"rss": current_rss_mib(), "peak": peak_rss_mib(), "arrow": arrow_mib()}
            result = function(*args, **kwargs)
            marks[f"{name} end"] = {"rss": current_rss_mib(), "peak": peak_rss_mib(), "arrow": arrow_mib()}
            return result
        return wrapper

    # The only instrumentation: RSS when scoring (after the scan) and writing start and end.
    enrichment.score_partition = marked("score", enrichment.score_partition)
    enrichment.write_days = marked("write", enrichment.write_days)
    job = sentiment_job()
    catalog = catalog_at(params["home"])
    provider = LocalProvider(VaderSentimentModel(), Sentiment)
    day = dt.date.fromisoformat(params["day"])
    began = time.perf_counter()
    report = enrichment.enrich_days(job, day, day, catalog, provider, log=quiet_log())
    wall = time.perf_counter() - began
    import pyarrow as pa

    return {"after_imports": after_imports, "marks": marks, "arrow_backend": pa.default_memory_pool().backend_name, "peak": peak_rss_mib(), "wall": wall, "seconds": report.seconds,
            "posts": report.posts, "statuses": dict(report.statuses), "model": report.model}


def measure_rss(home: Path, posts: int, day: dt.date) -> dict:
    print(f"2. peak RSS: seeding {posts:,} posts on {day} in a separate process ...", flush=True)
    seeded = seed(home, posts, day)
    print(f"   seeded in {seeded:.0f} s; enriching the day with the local model in a fresh process ...", flush=True)
    figures, _ = run_child("local", {"home": str(home), "day": day.isoformat()})
    return {**figures, "seeded": seeded}


# --- 3. re-run of an unchanged day through Azure OpenAI ------------------------------------------


class Emulator:
    """The emulator in its own process: fast (no latency, no faults) and a quota that never throttles."""

    def __init__(self) -> None:
        flags = ["--rpm", str(EMULATOR_RPM), "--tpm", str(EMULATOR_TPM), "--seed", "1", "--api-key", API_KEY,
                 "--deployment", DEPLOYMENT]
        self.process = subprocess.Popen([sys.executable, "-m", "social_enrich.devtools.azure_openai_emulator", *flags],
                                        stdout=subprocess.PIPE, text=True)
        self.endpoint = self.process.stdout.readline().strip()
        if not self.endpoint.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the emulator did not start: {self.endpoint!r}")

    def requests(self) -> int:
        with urllib.request.urlopen(f"{self.endpoint}/stats", timeout=10) as answer:
            return json.load(answer)["requests"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def child_azure(params: dict) -> dict:
    from social_enrich.enrichment import enrich_days
    from social_enrich.inference.selection import environment_provider

    job = sentiment_job()
    catalog = catalog_at(params["home"])
    provider = environment_provider(job)
    day = dt.date.fromisoformat(params["day"])
    began = time.perf_counter()
    report = enrich_days(job, day, day, catalog, provider, log=quiet_log())
    wall = time.perf_counter() - began
    return {"wall": wall, "seconds": report.seconds, "requests": report.usage.requests, "posts": report.posts,
            "cache_hits": report.cache_hits, "statuses": dict(report.statuses), "model": report.model}


def measure_rerun(home: Path, posts: int, day: dt.date) -> dict:
    from social_enrich.environment import default_state_store
    from social_enrich.state.sqlite import SQLiteState

    print(f"3. re-run: seeding {posts:,} posts on {day} in a separate process ...", flush=True)
    seeded = seed(home, posts, day)
    emulator = Emulator()
    env = {"SOCIAL_ENRICH_ENV": "production", "AZURE_OPENAI_ENDPOINT": emulator.endpoint, "AZURE_OPENAI_API_KEY": API_KEY, "AZURE_OPENAI_DEPLOYMENT": DEPLOYMENT,
           "AZURE_OPENAI_RPM": str(EMULATOR_RPM), "AZURE_OPENAI_TPM": str(EMULATOR_TPM)}
    os.environ["SOCIAL_ENRICH_HOME"] = str(home)
    state = default_state_store()
    if not isinstance(state, SQLiteState):  # "no cache file" deletes the file: the embedded backend only
        raise SystemExit(f"bench: the re-run measure needs the SQLite state store, not {state!r}: unset SOCIAL_ENRICH_STATE_URL")
    cache = state.cache_path
    print(f"   seeded in {seeded:.0f} s; emulator {emulator.endpoint} (no latency, no faults, RPM {EMULATOR_RPM:,}); "
          "each run in a fresh process ...", flush=True)
    runs = {}
    try:
        for label in ("first run", "re-run", "re-run, no cache file"):
            if label == "re-run, no cache file":
                for path in (cache, cache.with_name(cache.name + "-wal"), cache.with_name(cache.name + "-shm")):
                    path.unlink(missing_ok=True)
            before = emulator.requests()
            figures, process_wall = run_child("azure", {"home": str(home), "day": day.isoformat()}, env)
            runs[label] = {**figures, "emulator_requests": emulator.requests() - before, "process_wall": process_wall}
            print(f"   {label:<22} {figures['posts']:,} posts in {figures['wall']:.2f} s, {figures['requests']:,} requests, "
                  f"{figures['cache_hits']:,} from the cache", flush=True)
    finally:
        emulator.stop()
    return {"runs": runs, "seeded": seeded}


# --- the report ---------------------------------------------------------------------------------


def verdict(met: bool) -> str:
    return "met" if met else "not met"


def phases(seconds: dict) -> str:
    return "  ".join(f"{p} {seconds[p]:.2f}" for p in ("scan", "score", "write"))


def report(args: argparse.Namespace, writes: dict | None, rss: dict | None, rerun: dict | None) -> None:
    summary = []
    print()
    print(f"== bench_scale{' --quick' if args.quick else ''}: {os.cpu_count()} CPU(s) ==")
    for layout, figures in (writes or {}).items():
        shape = (f"a year of days ({TARGET_DAYS}): the days grow with the target" if layout == "A"
                 else f"days of {DAY_ROWS:,} rows: the target grows by days")
        print(f"1{layout}. write_days of one {WRITE_POSTS:,}-post day ({MOVED_POSTS:,} rows moving from 2 earlier days) "
              f"vs target size, {shape}; median of {REPEATS}, after a warm-up")
        print(f"   {'target rows':>12}  {'days':>5}  {'median s':>8}  {'runs (s)':<20}  {'warm-up':>7}  {'rows rewritten':>14}  {'load table':>10}")
        for rows, w in figures.items():
            runs = ", ".join(f"{s:.2f}" for s in w["seconds"])
            print(f"   {rows:>12,}  {layout_days(layout, rows):>5}  {statistics.median(w['seconds']):>8.2f}  {runs:<20}  "
                  f"{w['warmup']:>7.2f}  {w['rewritten_rows']:>14,}  {w['open']:>9.2f}s")
        smallest, largest = min(figures), max(figures)
        ratio = statistics.median(figures[largest]["seconds"]) / statistics.median(figures[smallest]["seconds"])
        print(f"   largest/smallest ({largest:,} / {smallest:,} rows) = {ratio:.2f}x (goal <= {GOAL_WRITE_RATIO:g}x) "
              f"{verdict(ratio <= GOAL_WRITE_RATIO)}")
        summary.append((f"write {layout}, {largest:,} vs {smallest:,}-row target", f"{ratio:.2f}x", f"<= {GOAL_WRITE_RATIO:g}x",
                        ratio <= GOAL_WRITE_RATIO))
    if rss:
        base, peak = rss["after_imports"], rss["peak"]
        print(f"2. enrich_days of a {rss['posts']:,}-post day with the local model ({rss['model']}), fresh process "
              f"(seeding {rss['seeded']:.0f} s, not counted)")
        print(f"   RSS after imports {base['rss']:.0f} MiB (peak so far {base['peak']:.0f}); peak {peak:.0f} MiB "
              f"= baseline + {peak - base['rss']:.0f} MiB of work")
        marks = rss["marks"]
        print("   peak by the end of: scan {:.0f}  score {:.0f}  write {:.0f} MiB; RSS when scoring ends {:.0f} MiB".format(
            marks["score start"]["peak"], marks["score end"]["peak"], marks["write end"]["peak"], marks["score end"]["rss"]))
        print("   Arrow's allocator ({}): peak {:.0f} MiB; held when scoring ends {:.0f} MiB (posts' fields and target rows)".format(
            rss["arrow_backend"], marks["write end"]["arrow"]["max"], marks["score end"]["arrow"]["now"]))
        print(f"   seconds: {phases(rss['seconds'])}  (wall {rss['wall']:.1f}; {rss['posts'] / rss['wall']:,.0f} posts/s); "
              f"statuses {rss['statuses']}")
        print(f"   peak RSS {peak:.0f} MiB (goal <= {GOAL_RSS_MIB:.0f} MiB) {verdict(peak <= GOAL_RSS_MIB)}")
        summary.append((f"peak RSS, {rss['posts']:,}-post day, local", f"{peak:.0f} MiB", f"<= {GOAL_RSS_MIB:.0f} MiB",
                        peak <= GOAL_RSS_MIB))
    if rerun:
        runs = rerun["runs"]
        print(f"3. re-run of an unchanged {runs['first run']['posts']:,}-post day through Azure OpenAI (emulator, "
              f"{DEPLOYMENT}); each run a fresh process (seeding {rerun['seeded']:.0f} s, not counted)")
        for label, r in runs.items():
            print(f"   {label:<22} {r['wall']:6.2f} s  ({phases(r['seconds'])})  requests {r['requests']:,} "
                  f"(emulator {r['emulator_requests']:,})  from cache {r['cache_hits']:,}  process {r['process_wall']:.1f} s")
        again, refilled = runs["re-run"], runs["re-run, no cache file"]
        met = again["wall"] <= GOAL_RERUN_SECONDS and again["requests"] == 0 and again["emulator_requests"] == 0
        print(f"   re-run {again['wall']:.2f} s with {again['emulator_requests']} requests (goal <= {GOAL_RERUN_SECONDS:g} s, "
              f"0 requests) {verdict(met)}; with the cache file deleted {refilled['wall']:.2f} s, "
              f"{refilled['emulator_requests']} requests")
        summary.append(("re-run of an unchanged day, seconds", f"{again['wall']:.2f} s", f"<= {GOAL_RERUN_SECONDS:g} s",
                        again["wall"] <= GOAL_RERUN_SECONDS))
        summary.append(("re-run of an unchanged day, requests", f"{again['emulator_requests']}", "0",
                        again["requests"] == 0 and again["emulator_requests"] == 0))
        summary.append(("  same, response cache file deleted", f"{refilled['wall']:.2f} s, {refilled['emulator_requests']} req",
                        "none (2nd figure)", None))
    print()
    print("== summary ==")
    for what, figure, goal, met in summary:
        print(f"   {what:<40} {figure:>16}   goal {goal:<17} {'' if met is None else verdict(met)}")
    print(f"reproduce: python bench/bench_scale.py{' --quick' if args.quick else ''}"
          + (f" --only {args.only}" if args.only != "1,2,3" else ""))


CHILDREN = {"build": child_build, "writes": child_writes, "local": child_local, "azure": child_azure}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="targets of 10k/100k/1M rows, a 200,000-post day, a 20,000-post re-run")
    parser.add_argument("--only", default="1,2,3", help="which measurements to run, e.g. 1,3 (default all)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state folders")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        params = json.loads(args.params)
        Path(params["out"]).write_text(json.dumps(CHILDREN[args.child](params)))
        return 0
    wanted = {int(n) for n in args.only.split(",") if n.strip()}
    if not wanted or not wanted <= {1, 2, 3}:
        parser.error("--only takes some of 1,2,3")

    sizes = QUICK if args.quick else FULL
    # As the other benchmarks: the job's default first day, moved back to yesterday at the latest.
    day = min(dt.date(2026, 11, 1), dt.date.today() - dt.timedelta(days=1))
    for name in CLEARED_ENV:
        os.environ.pop(name, None)
    root = Path(tempfile.mkdtemp(prefix="social_enrich_bench_scale_"))
    homes = {n: root / f"measurement_{n}" for n in (1, 2, 3)}
    for path in homes.values():
        path.mkdir()
    os.environ.update(SOCIAL_ENRICH_HOME=str(root), SOCIAL_ENRICH_START_DATE=day.isoformat())
    began = time.perf_counter()
    try:
        writes = {layout: measure_writes(homes[1], sizes["targets"], day, layout) for layout in "AB"} if 1 in wanted else None
        rss = measure_rss(homes[2], sizes["rss_posts"], day) if 2 in wanted else None
        rerun = measure_rerun(homes[3], sizes["rerun_posts"], day) if 3 in wanted else None
        report(args, writes, rss, rerun)
        print(f"whole benchmark {time.perf_counter() - began:.0f} s")
    finally:
        if args.keep:
            print(f"state kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
