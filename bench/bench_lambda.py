"""The Lambda function's cold start and bundle size.

    python bench/bench_lambda.py [--bundle DIR] [--runs 5]

Builds the bundle (deploy/lambda/build_bundle.py) unless --bundle names one, then prints:
- its size unzipped (against Lambda's 250 MB) and zipped;
- the import of social_enrich.lambda_handler in a fresh interpreter that sees only the standard
  library and the bundle (`python -I -S`), as on Lambda: wall time of the import per run, the whole
  process, and the packages whose modules take longest to import (`python -X importtime`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "lambda"))

from build_bundle import LAMBDA_UNZIPPED_LIMIT, build, folder_bytes, zip_folder  # noqa: E402

IMPORT = """
import sys, time
sys.path.insert(0, {bundle!r})
started = time.perf_counter()
import social_enrich.lambda_handler
print(time.perf_counter() - started)
assert "dagster" not in sys.modules, "the function imported Dagster"
"""


def isolated(code: str, *flags: str) -> subprocess.CompletedProcess:
    """A fresh interpreter that sees the standard library and the bundle only (-I: no environment, -S: no site)."""
    return subprocess.run([sys.executable, "-I", "-S", *flags, "-c", code], capture_output=True, text=True, check=True)


def heaviest_imports(stderr: str, count: int = 8) -> list[tuple[float, str]]:
    """Packages by the import time spent in their own modules (-X importtime's "self" column, summed)."""
    totals: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        if own.strip().isdigit():
            package = name.strip().split(".")[0]
            totals[package] = totals.get(package, 0.0) + int(own) / 1e6
    return sorted(((seconds, name) for name, seconds in totals.items()), reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="an existing bundle folder (default: build one in a temp folder)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        bundle = args.bundle or Path(scratch) / "lambda"
        if args.bundle is None:
            build(bundle)
        size = folder_bytes(bundle)
        zipped = zip_folder(bundle, Path(scratch) / "lambda.zip")
        print(f"\nbundle: {size / 2**20:.1f} MB unzipped ({size / LAMBDA_UNZIPPED_LIMIT:.0%} of Lambda's 250 MB), "
              f"{zipped / 2**20:.1f} MB zipped")

        imports, processes = [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            done = isolated(IMPORT.format(bundle=str(bundle)))
            processes.append(time.perf_counter() - started)
            imports.append(float(done.stdout.strip()))
        print(f"import social_enrich.lambda_handler, {args.runs} fresh interpreters: "
              f"median {statistics.median(imports):.2f} s (min {min(imports):.2f}, max {max(imports):.2f}); "
              f"whole process median {statistics.median(processes):.2f} s")
        report = isolated(IMPORT.format(bundle=str(bundle)), "-X", "importtime").stderr
        print("heaviest imports: " + ", ".join(f"{name} {seconds:.2f} s" for seconds, name in heaviest_imports(report)))


if __name__ == "__main__":
    main()
