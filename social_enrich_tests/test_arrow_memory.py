"""Arrow's allocator returns freed memory (jemalloc, no decay) unless the user chose one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import social_enrich, pyarrow as pa; print(pa.default_memory_pool().backend_name)"


def backend(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


@pytest.mark.skipif(sys.platform != "linux", reason="jemalloc is chosen on Linux only")
def test_importing_social_enrich_makes_arrow_return_freed_memory():
    assert backend() == "jemalloc"


def test_an_allocator_the_user_chose_is_kept():
    assert backend(ARROW_DEFAULT_MEMORY_POOL="system") == "system"
