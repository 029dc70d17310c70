"""A one-day write into a target table with ~90 daily writes behind it, before and after maintenance.

    python bench/bench_maintenance.py [--days 90] [--posts-per-day 2000] [--repeats 5] [--keep]

In a fresh temporary state folder, writes one day at a time through the project's own write path
(open_target + write_days, as an enrichment run does; a share of each day's posts were written on
an earlier day and move), then times the write of one more day, runs the maintenance job's
run_maintenance with the default settings as of a week later (so the writes' snapshots are past
expire_snapshots_older_than_days), and times the same write again. Prints the medians, their ratio,
what maintenance did and the table's snapshots, manifests and data files at each point.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--posts-per-day", type=int, default=2000)
    parser.add_argument("--moved-share", type=float, default=0.05, help="share of a day's posts first written on an earlier day")
    parser.add_argument("--repeats", type=int, default=5, help="timed writes before and after maintenance")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state folder")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench_maintenance_"))
    os.environ["SOCIAL_ENRICH_HOME"] = str(home)
    try:
        run(args)
    finally:
        if args.keep:
            print(f"state folder kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def run(args: argparse.Namespace) -> None:
    from pyiceberg.types import LongType

    from social_enrich.config import MaintenanceConfig, load_job_config
    from social_enrich.environment import BUILTIN_JOBS_DIR
    from social_enrich.lakehouse.catalog import open_catalog
    from social_enrich.lakehouse.maintenance import run_maintenance
    from social_enrich.lakehouse.target_table import open_target, write_days

    job = load_job_config(BUILTIN_JOBS_DIR / "sentiment" / "defs.yaml")
    catalog = open_catalog()
    start = dt.date(2026, 1, 1)
    per_day, moved = args.posts_per_day, int(args.posts_per_day * args.moved_share)
    schema = open_target(catalog, job, LongType()).schema().as_arrow()  # creates the target

    def day_rows(i: int) -> tuple[dt.date, pa.Table, list[dt.date]]:
        """Day i's posts: new ones, and some first written on the day before (they move to day i)."""
        day = start + dt.timedelta(days=i)
        keys = list(range(i * per_day, (i + 1) * per_day))
        earlier = [start + dt.timedelta(days=i - 1)] if i else []
        if i:
            keys += [(i - 1) * per_day + k for k in range(moved)]
        at = dt.datetime.combine(day, dt.time(12), tzinfo=dt.timezone.utc)
        n = len(keys)
        columns = {
            "post_key": keys, "label": ["positive", "negative", "neutral", "mixed"] * (n // 4) + ["neutral"] * (n % 4),
            "score": [k % 200 / 100 - 1 for k in keys], "model": ["vader-3.3.2"] * n, "prompt_version": ["sentiment-v1"] * n,
            "input_hash": [f"{k:064x}" for k in keys], "status": ["ok"] * n, "error": [None] * n,
            "input_truncated": [False] * n, "source_update_time": [at] * n, "partition_date": [day] * n, "written_at": [at] * n,
        }
        # Any other response field (e.g. confidence) is left empty.
        return day, pa.Table.from_pydict({f.name: columns.get(f.name, [None] * n) for f in schema}, schema=schema), earlier

    def write(i: int) -> float:
        day, rows, earlier = day_rows(i)
        started = time.perf_counter()
        # What an enrichment run does: open (load and check) the target, then write the day.
        write_days(open_target(catalog, job, LongType()), job, [day], rows, may_live_on=earlier)
        return time.perf_counter() - started

    def state() -> str:
        table = open_target(catalog, job, LongType())
        manifests = len(table.current_snapshot().manifests(table.io))
        files = sum(1 for _ in table.scan().plan_files())
        return f"{len(table.metadata.snapshots)} snapshots, {manifests} manifests, {files} data files"

    print(f"writing {args.days} days of {per_day} posts ({moved} of them moved from the day before) ...", flush=True)
    build = [write(i) for i in range(args.days)]
    print(f"  first 3 days' writes {statistics.mean(build[:3]):.3f}s each, last 3 days' {statistics.mean(build[-3:]):.3f}s each")
    print(f"  table: {state()}")

    timed_day = args.days  # one more day, written again for each repeat (a re-run replaces it)
    before = statistics.median(write(timed_day) for _ in range(args.repeats))
    print(f"one-day write before maintenance: {before:.3f}s (median of {args.repeats}); table: {state()}")

    table = open_target(catalog, job, LongType())
    now = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=7, seconds=1)  # the schedule, a week after these writes
    started = time.perf_counter()
    report = run_maintenance(table, MaintenanceConfig(), now)
    took = time.perf_counter() - started
    c, m, e = report.compaction, report.manifests, report.expiry
    print(f"maintenance (defaults) in {took:.2f}s: expired {e.snapshots_expired} of {e.snapshots_before} snapshots, "
          f"deleted {e.files_deleted} files ({e.bytes_deleted / 1e6:.1f} MB); manifests {m.manifests_before} -> "
          f"{m.manifests_after}; compacted {c.partitions_rewritten} partitions ({c.data_files_before} -> {c.data_files_after} data files)")
    print("  seconds: " + ", ".join(f"{step} {s:.2f}" for step, s in report.seconds.items()) + f"; table: {state()}")

    after = statistics.median(write(timed_day) for _ in range(args.repeats))
    print(f"one-day write after maintenance:  {after:.3f}s (median of {args.repeats}); table: {state()}")
    print(f"before/after: {before / after:.2f}x")


if __name__ == "__main__":
    main()
