"""`python -m social_enrich demo` seeds sample gold data, materializes its days and prints a summary;
`python -m social_enrich seed` only seeds the sample gold tables; `python -m social_enrich backfill`
materializes a range of days in grouped runs, without a daemon."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections import Counter

import dagster as dg
from pyiceberg.catalog import Catalog

from social_enrich import demo
from social_enrich.config import JobConfig, discover_job_configs
from social_enrich.enrichment import days_between
from social_enrich.dead_runs import sweep_dead_runs
from social_enrich.definitions import build_definitions
from social_enrich.environment import state_dir
from social_enrich.lakehouse.catalog import environment_catalog, load_table
from social_enrich.lakehouse.partition_scan import days_text


# Dagster's run tags for a partition range (what `dagster asset materialize --partition-range` sets).
ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"
PARTITION_TAG = "dagster/partition"


def _instance() -> dg.DagsterInstance:
    """The instance in $DAGSTER_HOME, else one under the state folder so `dagster dev` shows the runs later."""
    if not os.environ.get("DAGSTER_HOME"):
        home = state_dir() / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dagster.yaml"
        if not config.exists():
            config.write_text("telemetry:\n  enabled: false\n")
        os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


def find_job(name: str) -> JobConfig:
    jobs = {job.name: job for job in discover_job_configs()}
    if name not in jobs:
        raise SystemExit(f"unknown job '{name}'; the jobs are {sorted(jobs)}")
    return jobs[name]


def seed(catalog: Catalog, job: JobConfig, posts: int, days: int) -> demo.DemoSummary:
    start = job.connector.source.start_date
    print(f"Seeding {posts} sample posts over {days} days from {start} ...", flush=True)
    summary = demo.seed_gold_tables(catalog, posts=posts, days=days, start=start)
    print(f"  gold: {summary.fact_rows} fact rows, {summary.dim_rows} detail rows, snapshots {summary.snapshots}")
    return summary


def run_tags(first: dt.date, last: dt.date) -> dict[str, str]:
    """The partition tags the Runs list shows: a single day's own partition tag, else the range."""
    if first == last:
        return {PARTITION_TAG: first.isoformat()}
    return {ASSET_PARTITION_RANGE_START_TAG: first.isoformat(), ASSET_PARTITION_RANGE_END_TAG: last.isoformat()}


def check_range(job: JobConfig, first: dt.date, last: dt.date) -> None:
    """Refuse, before any work, days that are not partitions of the job's asset."""
    keys = dg.DailyPartitionsDefinition(start_date=job.connector.source.start_date.isoformat()).get_partition_keys()
    if not keys:
        raise SystemExit(f"job '{job.name}' has no partition yet: its first day is {job.connector.source.start_date}")
    outside = [d for d in (first, last) if not keys[0] <= d.isoformat() <= keys[-1]]
    if outside:
        raise SystemExit(
            f"{days_text(first, last)} is not within the partitions of {job.asset_name}: they run from {keys[0]} "
            f"(connector.source.start_date) to {keys[-1]} (yesterday, UTC; today's partition exists once the day is over)"
        )


def materialize_range(
    job_def: dg.JobDefinition, instance: dg.DagsterInstance, job: JobConfig, first: dt.date, last: dt.date, drop: bool = False
) -> bool:
    """One Dagster run of the days first..last (one scan, one commit); prints a line per day and says if it succeeded."""
    started = time.perf_counter()
    # execute_in_process uses Dagster's in-process executor, not the code location's: sweep here, so a
    # run that died on this machine does not hold the pool for this one.
    for run_id in sweep_dead_runs(instance):
        print(f"  marked run {run_id} failed: its run worker on this machine is gone; its pool slots are freed", flush=True)
    result = job_def.execute_in_process(
        instance=instance,
        tags=run_tags(first, last),
        asset_selection=[dg.AssetKey(job.asset_name)],
        run_config={
            "loggers": {"console": {"config": {"log_level": "INFO"}}},
            "ops": {job.asset_name: {"config": {"drop": drop}}},
        },
        raise_on_error=False,
    )
    materializations = result.asset_materializations_for_node(job.asset_name)
    if not result.success or not materializations:
        failure = next((e for e in result.all_events if e.event_type_value == "STEP_FAILURE"), None)
        data = failure.step_failure_data if failure is not None else None
        cause = data.user_failure_data.description if data and data.user_failure_data else (data.error.message.strip() if data and data.error else "")
        print(f"  {days_text(first, last)}: run {result.run_id} FAILED: {cause or 'see `dagster dev` or the log above'}", file=sys.stderr)
        return False
    for event in materializations:
        m = {k: v.value for k, v in event.metadata.items()}
        print(f"  {event.partition}: {m['posts_touched']} posts, {m['posts_scored']} scored, {m['posts_failed']} failed", flush=True)
    print(f"  {days_text(first, last)}: done in {time.perf_counter() - started:.1f}s (run {result.run_id[:8]})", flush=True)
    return True


def run_demo(posts: int, days: int, job_name: str) -> int:
    job = find_job(job_name)
    start = job.connector.source.start_date
    check_range(job, start, start + dt.timedelta(days=days - 1))  # every sample day must be a partition
    catalog = environment_catalog()
    summary = seed(catalog, job, posts, days)

    job_def = build_definitions().resolve_implicit_global_asset_job_def()
    instance = _instance()
    for n, day in enumerate(summary.days):
        # The sample gold tables were just re-created, so rebuild the target with the first day.
        if not materialize_range(job_def, instance, job, day, day, drop=n == 0):
            return 1

    target = load_table(catalog, job.connector.target.identifier).scan().to_arrow()
    labels = Counter(target["label"].drop_null().to_pylist())
    statuses = Counter(target["status"].to_pylist())
    truth = demo.intended_labels(catalog)
    keys, predicted = target[job.connector.target.index_field].to_pylist(), target["label"].to_pylist()
    agree = sum(1 for k, p in zip(keys, predicted) if p is not None and truth.get(k) == p)
    print("\nSummary")
    print(f"  target table   {job.connector.target.identifier}: {target.num_rows} rows, {len(set(keys))} distinct posts")
    print(f"  statuses       {dict(statuses)}")
    print(f"  labels         {dict(labels.most_common())}")
    print(f"  model          {target['model'][0]}; agrees with the generator's intended label on {agree / max(len(keys), 1):.1%} of posts")
    print(f"  warehouse      {state_dir() / 'warehouse'} (catalog {state_dir() / 'catalog.db'})")
    print(f"  Dagster runs   DAGSTER_HOME={os.environ['DAGSTER_HOME']} dagster dev -m social_enrich.definitions")
    return 0


def run_backfill(job_name: str, first: dt.date, last: dt.date, max_per_run: int | None) -> int:
    """The days first..last in runs of at most max_per_run days (the job's backfill grouping by default)."""
    job = find_job(job_name)
    check_range(job, first, last)
    size = max_per_run or job.automation.max_partitions_per_run
    ranges = [(day, min(day + dt.timedelta(days=size - 1), last)) for day in days_between(first, last)[::size]]
    print(f"Backfilling {days_text(first, last)} of {job.asset_name} in {len(ranges)} run(s) of up to {size} days", flush=True)
    job_def = build_definitions().resolve_implicit_global_asset_job_def()
    instance = _instance()
    failed = [(a, b) for a, b in ranges if not materialize_range(job_def, instance, job, a, b)]
    if failed:
        print(f"{len(failed)} of {len(ranges)} runs failed: {', '.join(days_text(a, b) for a, b in failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m social_enrich", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in [
        ("demo", "seed sample gold tables and materialize the enrichment for every day"),
        ("seed", "only (re)create the sample gold tables"),
    ]:
        command = commands.add_parser(name, help=text)
        command.add_argument("--posts", type=int, default=3000, help="sample posts to generate (default 3000)")
        command.add_argument("--days", type=int, default=7, help="days the posts are spread over (default 7)")
        command.add_argument("--job", default="sentiment", help="the job whose catalog and start date to use")
    backfill = commands.add_parser("backfill", help="materialize a range of days, grouped into runs like a UI backfill")
    backfill.add_argument("--from", dest="first", type=dt.date.fromisoformat, required=True, help="first day, YYYY-MM-DD")
    backfill.add_argument("--to", dest="last", type=dt.date.fromisoformat, required=True, help="last day, YYYY-MM-DD")
    backfill.add_argument("--max-per-run", type=int, help="days per run (default: the job's automation.max_partitions_per_run)")
    backfill.add_argument("--job", default="sentiment", help="the enrichment job to backfill")
    args = parser.parse_args(argv)
    if args.command == "backfill":
        if args.last < args.first:
            parser.error(f"--to {args.last} is before --from {args.first}")
        if args.max_per_run is not None and args.max_per_run < 1:
            parser.error("--max-per-run must be at least 1")
    elif args.posts < 1 or args.days < 1:
        parser.error("--posts and --days must be at least 1")
    if args.command == "seed":
        job = find_job(args.job)
        seed(environment_catalog(), job, args.posts, args.days)
        return 0
    if args.command == "backfill":
        return run_backfill(args.job, args.first, args.last, args.max_per_run)
    return run_demo(args.posts, args.days, args.job)


if __name__ == "__main__":
    sys.exit(main())
