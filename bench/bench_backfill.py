"""A 30-day backfill grouped into runs, against one run per partition, and the snapshot sensor's latency.

    python bench/bench_backfill.py [--posts 30000] [--days 30] [--max-per-run 31]

Seeds --posts sample posts over --days days into a fresh temporary SOCIAL_ENRICH_HOME (in a
separate process), then in this process, one after the other in the same session:
1. grouped: the days as the asset's backfill policy groups them (runs of up to --max-per-run days),
   each run one `execute_in_process` with a partition range;
2. per partition: the same days, one run per day, the target dropped first.
For each it prints the runs, the source scans (table scans planned by pyiceberg), the commits to
the target (its append snapshots), the wall time and the ratio. Then it appends one row to a gold
table and ticks the snapshot sensor until it requests a run: the ticks that took, and the time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

CLEARED_ENV = ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_DEPLOYMENT",
               "SOCIAL_ENRICH_JOBS_DIR", "SOCIAL_ENRICH_WAREHOUSE", "DAGSTER_HOME")


class ScanCounter:
    """Counts pyiceberg table scans planned (each `Table.scan` call), the cost that grouping saves."""

    def __init__(self) -> None:
        from pyiceberg.table import Table

        self.count = 0
        original = Table.scan

        def counted(table, *args, **kwargs):
            self.count += 1
            return original(table, *args, **kwargs)

        Table.scan = counted  # type: ignore[method-assign]


def backfill(job_def, instance, job, ranges) -> float:
    """The ranges one run each, as `python -m social_enrich backfill` runs them; the target rebuilt first."""
    from social_enrich.__main__ import materialize_range

    started = time.perf_counter()
    for n, (first, last) in enumerate(ranges):
        assert materialize_range(job_def, instance, job, first, last, drop=n == 0)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=30_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--max-per-run", type=int, default=None, help="default: the job's automation.max_partitions_per_run")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench_backfill_"))
    for name in CLEARED_ENV:
        os.environ.pop(name, None)
    os.environ["SOCIAL_ENRICH_HOME"] = str(home)
    try:
        subprocess.run([sys.executable, "-m", "social_enrich", "seed", "--posts", str(args.posts), "--days", str(args.days)],
                       check=True, stdout=subprocess.DEVNULL)
        import dagster as dg

        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        from social_enrich.config import load_job_config
        from social_enrich.definitions import build_definitions
        from social_enrich.enrichment import days_between
        from social_enrich.environment import BUILTIN_JOBS_DIR
        from social_enrich.lakehouse.catalog import load_table, open_catalog

        job = load_job_config(BUILTIN_JOBS_DIR / "sentiment" / "defs.yaml")
        catalog = open_catalog()
        first = job.connector.source.start_date
        days = days_between(first, first + dt.timedelta(days=args.days - 1))
        size = args.max_per_run or job.automation.max_partitions_per_run
        grouped = [(d, min(d + dt.timedelta(days=size - 1), days[-1])) for d in days[::size]]
        per_day = [(d, d) for d in days]
        job_def = build_definitions().resolve_implicit_global_asset_job_def()
        scans = ScanCounter()

        def commits() -> int:
            snapshots = load_table(catalog, job.connector.target.identifier).snapshots()
            return sum(1 for s in snapshots if s.summary and s.summary.operation.value == "append")

        print(f"{args.posts} posts over {args.days} days; grouped runs of up to {size} days\n")
        print(f"{'backfill':<16}{'runs':>6}{'scans':>8}{'commits':>9}{'seconds':>10}")
        figures = {}
        with dg.instance_for_test() as instance:
            for label, ranges in (("grouped", grouped), ("per partition", per_day)):
                scans.count = 0
                seconds = backfill(job_def, instance, job, ranges)
                figures[label] = seconds
                print(f"{label:<16}{len(ranges):>6}{scans.count:>8}{commits():>9}{seconds:>10.1f}", flush=True)
            print(f"\nper partition / grouped wall time: {figures['per partition'] / figures['grouped']:.1f}x")

            # The snapshot sensor: from a gold append to its run request.
            defs = build_definitions()
            sensor = defs.resolve_sensor_def(f"{job.name}_gold_snapshots")
            cursor = sensor(dg.build_sensor_context(instance=instance, definitions=defs)).cursor  # first tick: watch from now
            fact = load_table(catalog, job.connector.source.tables[0].identifier)
            rows = fact.scan(limit=1).to_arrow()
            fact.append(rows)  # the same row again: a new snapshot touching its day
            appended = time.perf_counter()
            for ticks in range(1, 11):
                result = sensor(dg.build_sensor_context(instance=instance, definitions=defs, cursor=cursor))
                cursor = result.cursor
                if result.run_requests:
                    break
            took = time.perf_counter() - appended
            print(f"snapshot sensor: run request for {[r.partition_key for r in result.run_requests]} after {ticks} tick(s), "
                  f"{took * 1000:.0f} ms of sensor work (plus up to sensor_interval_seconds={job.automation.sensor_interval_seconds} s of waiting)")
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
