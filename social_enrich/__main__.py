"""`python -m social_enrich demo` seeds sample gold data, materializes its days and prints a summary;
`python -m social_enrich seed` only seeds the sample gold tables."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter

import dagster as dg
from pyiceberg.catalog import Catalog

from social_enrich import demo
from social_enrich.config import JobConfig, discover_job_configs
from social_enrich.definitions import build_definitions
from social_enrich.environment import state_dir
from social_enrich.lakehouse.catalog import load_table, open_catalog


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


def run_demo(posts: int, days: int, job_name: str) -> int:
    job = find_job(job_name)
    catalog = open_catalog(job.connector)
    summary = seed(catalog, job, posts, days)

    defs = build_definitions()
    job_def = defs.resolve_implicit_global_asset_job_def()
    instance = _instance()
    for n, day in enumerate(summary.days):
        run_config = {
            "loggers": {"console": {"config": {"log_level": "INFO"}}},
            # The sample gold tables were just re-created, so rebuild the target with the first day.
            "ops": {job.asset_name: {"config": {"drop": n == 0}}},
        }
        result = job_def.execute_in_process(
            instance=instance,
            partition_key=day.isoformat(),
            asset_selection=[dg.AssetKey(job.asset_name)],
            run_config=run_config,
            raise_on_error=False,
        )
        meta = next(iter(result.asset_materializations_for_node(job.asset_name)), None)
        if not result.success or meta is None:
            print(f"  {day}: run {result.run_id} FAILED; see `dagster dev` or the log above", file=sys.stderr)
            return 1
        m = {k: v.value for k, v in meta.metadata.items()}
        print(
            f"  {day}: {m['posts_touched']} posts, {m['posts_scored']} scored, {m['posts_failed']} failed, "
            f"{m['duration_seconds']:.1f}s (run {result.run_id[:8]})",
            flush=True,
        )

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
    args = parser.parse_args(argv)
    if args.posts < 1 or args.days < 1:
        parser.error("--posts and --days must be at least 1")
    # Dagster marks observable source assets and backfill policies beta; that is no news to a user here.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    if args.command == "seed":
        job = find_job(args.job)
        seed(open_catalog(job.connector), job, args.posts, args.days)
        return 0
    return run_demo(args.posts, args.days, args.job)


if __name__ == "__main__":
    sys.exit(main())
