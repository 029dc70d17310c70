"""The gold snapshot sensor: enrich the days that new gold snapshots touched.

Each tick reads, from Iceberg metadata alone, which days the snapshots committed since the last
tick touched (``days_touched_since``), records each gold table's new snapshot id as its data
version, and requests the enrichment partitions of those days: one run per day, or one backfill
when there are many. The cursor keeps the last snapshot seen per table, and the days whose
partition does not exist yet (today's data), to be requested once it does.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
# Private in Dagster 1.13, but the only way to ask a sensor for a backfill (RunRequest.for_asset_graph_subset).
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from social_enrich.assets import observation_metadata, source_asset_key
from social_enrich.config import JobConfig, TableRef
from social_enrich.lakehouse.catalog import TableNotFoundError, load_table
from social_enrich.resources import IcebergCatalogResource
from social_enrich.lakehouse.snapshot_changes import days_touched_since
from social_enrich.lakehouse.snapshots import current_snapshot_info

CURSOR_VERSION = 1
TRIGGER_TAGS = {"social_enrich/trigger": "gold_snapshot"}
DATA_VERSION_TAG = "dagster/data_version"  # what observable source assets record their version under


class SnapshotCursorError(ValueError):
    """The sensor's cursor cannot be read; the message says how to reset it."""


@dataclass
class SnapshotCursor:
    # table identifier -> last snapshot id seen; None: the table was missing or empty, so all its
    # snapshots are new. A table absent from the mapping has not been seen at all.
    tables: dict[str, int | None] = field(default_factory=dict)
    # 'YYYY-MM-DD' -> {table: newest snapshot id touching it}: days whose partition does not exist yet.
    pending_days: dict[str, dict[str, int]] = field(default_factory=dict)

    def dumps(self) -> str:
        return json.dumps(
            {"version": CURSOR_VERSION, "tables": self.tables, "pending_days": self.pending_days}, sort_keys=True
        )


def read_cursor(text: str | None, sensor_name: str) -> SnapshotCursor | None:
    """The cursor, or None when the sensor has none yet (it was just turned on)."""
    if not text:
        return None
    reset = f"reset it with `dagster sensor cursor {sensor_name} --delete` (or from the sensor's page in the UI)"
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise SnapshotCursorError(f"sensor {sensor_name}: the cursor is not JSON ({e}): {text[:200]!r}; {reset}") from e
    version = raw.get("version") if isinstance(raw, dict) else None
    if not isinstance(version, int):
        raise SnapshotCursorError(f"sensor {sensor_name}: the cursor has no version: {text[:200]!r}; {reset}")
    if version > CURSOR_VERSION:
        raise SnapshotCursorError(
            f"sensor {sensor_name}: the cursor is version {version}, written by a newer social_enrich "
            f"(this one reads up to {CURSOR_VERSION}); upgrade social_enrich, or {reset}"
        )
    reader = _CURSOR_READERS.get(version)
    if reader is None:
        raise SnapshotCursorError(f"sensor {sensor_name}: unknown cursor version {version}; {reset}")
    try:
        return reader(raw)
    except (TypeError, ValueError, AttributeError) as e:
        raise SnapshotCursorError(f"sensor {sensor_name}: malformed version {version} cursor ({e}); {reset}") from e


def _read_v1(raw: dict[str, Any]) -> SnapshotCursor:
    tables = {str(name): None if sid is None else int(sid) for name, sid in raw["tables"].items()}
    pending = {
        dt.date.fromisoformat(day).isoformat(): {str(t): int(s) for t, s in sources.items()}
        for day, sources in raw.get("pending_days", {}).items()
    }
    return SnapshotCursor(tables, pending)


# One reader per cursor version this code understands; a future v2 adds a reader and keeps v1's.
_CURSOR_READERS = {1: _read_v1}


def build_snapshot_sensor(job: JobConfig, asset: dg.AssetsDefinition) -> dg.SensorDefinition:
    """A sensor (stopped until a user turns it on) that requests ``asset``'s partitions of the
    days touched by new snapshots of ``job``'s gold tables."""
    name = f"{job.name}_gold_snapshots"
    partitions = asset.partitions_def
    if not isinstance(partitions, dg.DailyPartitionsDefinition):
        raise TypeError(f"{asset.key.to_user_string()} must have daily partitions, got {partitions}")

    @dg.sensor(
        name=name,
        # A selection by key rather than target=asset: only asset_selection sensors may ask for a
        # backfill, and the Definitions may then hold any build of the same asset.
        asset_selection=dg.AssetSelection.assets(asset.key),
        minimum_interval_seconds=job.automation.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=(
            f"Enriches the days that new snapshots of {', '.join(t.identifier for t in job.connector.source.tables)} "
            "touched, read from Iceberg metadata."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext, catalog: IcebergCatalogResource) -> dg.SensorResult:
        cursor = read_cursor(context.cursor, name)
        tick = _Tick(job, context.log)
        opened = catalog.open()
        for ref in job.connector.source.tables:
            tick.look_at(ref, opened, cursor)
        if cursor is not None:
            tick.add_pending(cursor.pending_days)
        ready = tick.ready_days(partitions)
        requests = tick.requests(ready, asset.key, partitions)
        # Returned, not set on the context: the cursor moves only when the whole tick succeeded.
        return dg.SensorResult(
            run_requests=requests,
            cursor=SnapshotCursor(tick.tables, tick.pending).dumps(),
            asset_events=tick.observations,
            skip_reason=None if requests else skip_reason(tick.pending),
        )

    return _sensor


def skip_reason(pending: dict[str, dict[str, int]]) -> str:
    """Why a tick requests nothing, in the same words as its log."""
    if pending:
        days = describe_days(frozenset(dt.date.fromisoformat(d) for d in pending))
        return f"holding {days}: touched by new gold snapshots, but without a partition yet; requested once the day is over"
    return "no new gold snapshot touched a day to enrich"


class _Tick:
    """What one evaluation learns, table by table."""

    def __init__(self, job: JobConfig, log: logging.Logger):
        self.job = job
        self.log = log
        self.tables: dict[str, int | None] = {}
        self.touched: dict[dt.date, dict[str, int]] = defaultdict(dict)  # day -> {table: newest snapshot}
        self.pending: dict[str, dict[str, int]] = {}
        self.observations: list[dg.AssetObservation] = []

    def look_at(self, ref: TableRef, catalog: Catalog, cursor: SnapshotCursor | None) -> None:
        name = ref.identifier
        try:
            table = load_table(catalog, name)
        except TableNotFoundError:
            self.log.info(f"{name} does not exist yet; watching for it")
            self.tables[name] = None
            return
        if cursor is None or name not in cursor.tables:
            self._start_watching(ref, table)
            return
        previous = cursor.tables[name]
        changes = days_touched_since(table, previous, ref.datetime_field, self.job.automation.fallback_days)
        self.tables[name] = changes.current_snapshot_id
        for change in changes.snapshots:
            self.log.info(f"{name}: snapshot {change.snapshot_id} ({change.operation}) touched {describe_days(change.days)}")
        if changes.fallback:
            self.log.warning(changes.fallback)
        newest: dict[dt.date, int] = {}
        for change in changes.snapshots:  # oldest first, so the latest snapshot of a day wins
            newest.update(dict.fromkeys(change.days, change.snapshot_id))
        for day in changes.days - newest.keys():  # a fallback window: no single snapshot to name
            newest[day] = changes.current_snapshot_id
        for day, snapshot_id in newest.items():
            self.touched[day][name] = snapshot_id
        if changes.current_snapshot_id is not None and changes.current_snapshot_id != previous:
            self._observe(ref, table, len(changes.snapshots), changes.days)

    def _start_watching(self, ref: TableRef, table: Table) -> None:
        snapshot = table.current_snapshot()
        self.tables[ref.identifier] = snapshot.snapshot_id if snapshot else None
        self.log.info(
            f"{ref.identifier}: watching from snapshot {snapshot.snapshot_id if snapshot else '(none yet)'}; days written "
            f"before it are not requested. To enrich them, launch a backfill of {self.job.asset_name} from its page in "
            f"the Dagster UI (Materialize, then pick the partitions), or one day at a time with `dagster asset "
            f"materialize -m social_enrich.definitions --select {self.job.asset_name} --partition YYYY-MM-DD`"
        )
        if snapshot is not None:
            self._observe(ref, table, 0, frozenset())

    def _observe(self, ref: TableRef, table: Table, new_snapshots: int, days: frozenset[dt.date]) -> None:
        """The table's data version, as its observable source asset records it."""
        info = current_snapshot_info(table)
        metadata = {
            **observation_metadata(info),
            "new_snapshots": new_snapshots,
            "days_touched": describe_days(days),
        }
        self.observations.append(
            dg.AssetObservation(
                asset_key=source_asset_key(ref), tags={DATA_VERSION_TAG: str(info.snapshot_id)}, metadata=metadata
            )
        )

    def add_pending(self, pending: dict[str, dict[str, int]]) -> None:
        """Days held back on earlier ticks; snapshots seen on this tick are newer, so they win."""
        for key, sources in pending.items():
            day = dt.date.fromisoformat(key)
            self.touched[day] = {**sources, **self.touched[day]}

    def ready_days(self, partitions: dg.DailyPartitionsDefinition) -> list[dt.date]:
        """The touched days that are partitions; later days wait in the cursor, earlier ones are dropped."""
        start = partitions.start.date()
        last_key = partitions.get_last_partition_key()
        last = dt.date.fromisoformat(last_key) if last_key else start - dt.timedelta(days=1)
        early = {d for d in self.touched if d < start}
        if early:
            self.log.info(
                f"not requesting {describe_days(early)}: before the first partition, "
                f"connector.source.start_date {start}"
            )
        later = {d for d in self.touched if d > last}
        if later:
            self.log.info(f"holding {describe_days(later)} until their partitions exist (the last one is {last_key})")
        self.pending = {d.isoformat(): self.touched[d] for d in sorted(later)}
        return sorted(d for d in self.touched if start <= d <= last)

    def requests(self, days: list[dt.date], key: dg.AssetKey, partitions: dg.DailyPartitionsDefinition) -> list[dg.RunRequest]:
        limit = self.job.automation.backfill_above_days
        if not days:
            return []
        if len(days) > limit:
            self.log.info(
                f"{len(days)} days touched, more than automation.backfill_above_days={limit}: "
                f"requesting one backfill of {describe_days(days)}"
            )
            keys = [d.isoformat() for d in days]
            subset = AssetGraphSubset(partitions_subsets_by_asset_key={key: partitions.empty_subset().with_partition_keys(keys)})
            return [dg.RunRequest.for_asset_graph_subset(subset, tags=TRIGGER_TAGS)]
        self.log.info(f"requesting {len(days)} run(s), one per day: {describe_days(days)}")
        return [
            dg.RunRequest(
                run_key=run_key(day, self.touched[day]),
                partition_key=day.isoformat(),
                asset_selection=[key],
                tags=TRIGGER_TAGS,
            )
            for day in days
        ]


def run_key(day: dt.date, sources: dict[str, int]) -> str:
    """The day and the newest snapshot of each table touching it: the same tick twice asks once,
    a later snapshot touching the day asks again."""
    return f"gold_snapshot:{day}:" + ",".join(f"{t}@{s}" for t, s in sorted(sources.items()))


def describe_days(days: Iterable[dt.date]) -> str:
    """Days as short ranges: '2026-11-01..2026-11-03, 2026-11-07'; 'no day' when empty."""
    ordered = sorted(days)
    if not ordered:
        return "no day"
    runs: list[list[dt.date]] = []
    for day in ordered:
        if runs and (day - runs[-1][-1]).days == 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ", ".join(f"{r[0]}..{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
