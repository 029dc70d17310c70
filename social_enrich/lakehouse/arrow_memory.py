"""Arrow memory that goes back to the system once it is freed.

pyarrow's default allocator (mimalloc) keeps the pages it freed for later use, so a process that
once decoded a large row group keeps that peak, and later peaks add to it. jemalloc with no decay
delay returns them at once: a 1,000,000-post day peaks at about 575 MiB instead of 730 MiB
(``python bench/bench_scale.py --only 2``), for about 2 s more of scanning.

Arrow's C++ code (the Parquet reader among it) takes its allocator from $ARROW_DEFAULT_MEMORY_POOL
when pyarrow is first imported, so this must run before that, and it is inherited by the processes
this one starts (Dagster's step processes). An allocator the user chose there is left as it is.
"""

from __future__ import annotations

import os
import sys


def return_freed_memory() -> None:
    """Choose jemalloc for Arrow, returning freed pages at once (Linux, where pyarrow's wheels have it)."""
    if sys.platform != "linux":
        return
    if "pyarrow" not in sys.modules:
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    import pyarrow as pa

    if pa.default_memory_pool().backend_name == "jemalloc":
        pa.jemalloc_set_decay_ms(0)
