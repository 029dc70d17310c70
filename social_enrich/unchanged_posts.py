"""Posts whose fields are unchanged keep the row the target already holds for them.

A re-run of a day, a post moved to a later day by new reactions but with the same text, a backfill
over days already done: the target has a good row (``ok`` or ``filtered``) for the same post, the
same ``input_hash``, model and prompt version. That row is the answer, taken as Arrow data, with no
cache lookup, no model call, so an unchanged day costs its scan. The response columns are typed
(lakehouse/response_schema.py: lists, structs, numbers); an ``ok`` row is kept only if its answer,
read back as it is stored, still validates with the response model (one written under an older
version of the model is scored again).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ValidationError
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import And, EqualTo, In

from social_enrich.config import JobConfig
from social_enrich.lakehouse.keys import plain
from social_enrich.lakehouse.target_table import GOOD_STATUSES, PARTITION_DATE

SOURCE_UPDATE_TIME = "source_update_time"


class TargetAnswers:
    """The target's rows of some days, found by (index value, input hash): good ones, and failed ones
    of posts that could not be sent (a null or empty text fails the same way every time)."""

    def __init__(self, rows: pa.Table, index: str, response_model: type[BaseModel] | None = None) -> None:
        if rows.num_rows:  # extension types (UUID) as their storage, as the scan gives the posts' keys
            rows = rows.set_column(rows.schema.get_field_index(index), index, plain(rows[index]))
        self.rows = rows
        self.response_model = response_model
        self.statuses = rows["status"].to_pylist() if rows.num_rows else []
        self.errors = rows["error"].to_pylist() if rows.num_rows else []
        self._at = {(k, h): n for n, (k, h) in enumerate(zip(rows[index].to_pylist(), rows["input_hash"].to_pylist()))} if rows.num_rows else {}

    @classmethod
    def load(cls, catalog: Catalog, job: JobConfig, days: Iterable[dt.date], model: str) -> TargetAnswers:
        """Rows of ``days`` (the run's days and those its posts' versions were written on) from this model and prompt."""
        index = job.connector.target.index_field
        try:
            table = catalog.load_table(job.connector.target.identifier)
        except NoSuchTableError:
            return cls(pa.table({index: pa.array([]), "input_hash": pa.array([], pa.string())}), index, job.response_model)
        rows = table.scan(row_filter=And(
            In(PARTITION_DATE, sorted(d.isoformat() for d in days)), EqualTo("model", model),
            EqualTo("prompt_version", job.inference.prompt_version),
        )).to_arrow()
        return cls(rows, index, job.response_model)

    def find(self, keys: list[Any], hashes: list[str], not_sendable: list[str | None]) -> list[int | None]:
        """For each post, the position of the row it keeps, or None: a good row for the same input, or
        the same failure for a post that cannot be sent (``not_sendable``: its error, else None). A post
        whose earlier attempt failed is tried again."""
        found = [self._at.get(pair) for pair in zip(keys, hashes)] if self._at else [None] * len(keys)
        for n, at in enumerate(found):
            if at is not None and self.statuses[at] not in GOOD_STATUSES and (not_sendable[n] is None or self.errors[at] != not_sendable[n]):
                found[n] = None
        self._drop_invalid(found)
        return found

    def _drop_invalid(self, found: list[int | None]) -> None:
        """Forget the ``ok`` rows whose answer does not validate with the response model."""
        model = self.response_model
        ok = [n for n, at in enumerate(found) if at is not None and self.statuses[at] == "ok"]
        if model is None or not ok:
            return
        names = [name for name in model.model_fields if name in self.rows.column_names]
        answers = self.rows.select(names).take(pa.array([found[n] for n in ok], pa.int64())).to_pylist()
        for n, answer in zip(ok, answers):
            try:
                model.model_validate(answer)
            except ValidationError:
                found[n] = None

    def rows_for(self, found: list[int], days: pa.Array, updated: pa.Array) -> tuple[pa.Table, int]:
        """Those rows, each on the post's day as of its latest touch; and how many were there already."""
        rows = self.rows.take(pa.array(found, pa.int64()))
        in_place = pc.and_(pc.equal(rows[PARTITION_DATE], days), pc.equal(rows[SOURCE_UPDATE_TIME], updated))
        for name, values in ((PARTITION_DATE, days), (SOURCE_UPDATE_TIME, updated)):
            rows = rows.set_column(rows.schema.get_field_index(name), name, values.cast(rows.schema.field(name).type))
        return rows, pc.sum(in_place.fill_null(False)).as_py() or 0
