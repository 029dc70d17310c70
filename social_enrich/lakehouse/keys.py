"""Index values as Arrow compute kernels accept them: extension types (UUID) as their storage."""

from __future__ import annotations

import pyarrow as pa


def plain_type(kind: pa.DataType) -> pa.DataType:
    return kind.storage_type if isinstance(kind, pa.BaseExtensionType) else kind


def plain(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One array that unique, is_in and sort accept."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return values.storage if isinstance(values.type, pa.BaseExtensionType) else values
