"""Facts about a table's current snapshot, named as pyiceberg's snapshot summary names them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyiceberg.table import Table


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: int | None  # None for a table with no data yet
    committed_at: dt.datetime | None
    total_records: int
    total_data_files: int


def current_snapshot_info(table: Table) -> SnapshotInfo:
    snapshot = table.current_snapshot()
    if snapshot is None:
        return SnapshotInfo(None, None, 0, 0)
    summary = snapshot.summary.additional_properties if snapshot.summary else {}
    return SnapshotInfo(
        snapshot_id=snapshot.snapshot_id,
        committed_at=dt.datetime.fromtimestamp(snapshot.timestamp_ms / 1000, tz=dt.timezone.utc),
        total_records=int(summary.get("total-records", 0)),
        total_data_files=int(summary.get("total-data-files", 0)),
    )
