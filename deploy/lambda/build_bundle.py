"""Build the Lambda bundle: the social_enrich package, its dependencies without Dagster, and the job configs.

    python deploy/lambda/build_bundle.py [--output build/lambda] [--zip build/lambda.zip]

Installs deploy/lambda/requirements.txt for Lambda's platform (manylinux x86_64, CPython 3.11, wheels
only) whatever this machine is, then removes what the function never loads (pyarrow's Flight, headers,
Cython sources and tests; social_enrich/devtools; duplicate copies of shared libraries that wheels
cannot store as symlinks; the API models of AWS services it never calls) and strips debug symbols
from shared libraries when `strip` is installed. Lambda unzips a bundle to at most 250 MB: the build
fails above that, saying by how much and which packages weigh most.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "deploy" / "lambda" / "requirements.txt"
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
PLATFORM = ["--platform", "manylinux2014_x86_64", "--implementation", "cp", "--python-version", "3.11", "--only-binary=:all:"]

# Never imported by the handler: pyarrow's Flight RPC and its sources, headers and tests.
UNUSED = [
    "pyarrow/include", "pyarrow/src", "pyarrow/tests", "pyarrow/*flight*", "pyarrow/**/*.pyx", "pyarrow/**/*.pxd",
    "pyarrow/**/*.pxi", "pyarrow/**/*.h", "pyarrow/**/*.cc",
    # Wheels store symlinks as copies: only the soname (libx.so.N) is loaded.
    "pyarrow/libarrow_python*.so", "pyarrow/libarrow_python*.so.*.*.*",
    "zstandard/_cffi*.so",  # CPython loads the C backend
    "**/tests/**/*.py[co]", "bin",
    # Development tools: the wheel already leaves out the Azure OpenAI emulator (pyproject.toml), and
    # the local Lambda runner is the local profile's, never the function's. Removed here as well, so a
    # stale build/lib from an older in-tree build cannot bring them back.
    "social_enrich/devtools",
]


# botocore carries the API models of every AWS service (~28 MB); the function calls these (sts and the
# sso pair: credential providers).
BOTOCORE_SERVICES = {"s3", "glue", "secretsmanager", "sts", "sso", "sso-oidc"}


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def prune(output: Path) -> int:
    removed = 0
    for pattern in UNUSED:
        for path in sorted(output.glob(pattern), reverse=True):
            if not path.exists():
                continue
            removed += folder_bytes(path) if path.is_dir() else path.stat().st_size
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for service in (output / "botocore" / "data").iterdir():
        if service.is_dir() and service.name not in BOTOCORE_SERVICES:
            removed += folder_bytes(service)
            shutil.rmtree(service)
    return removed


def strip_libraries(output: Path) -> int:
    """Debug symbols are half of some libraries; the code is the same without them."""
    strip = shutil.which("strip")
    if strip is None:
        print("strip is not installed: shared libraries keep their debug symbols", file=sys.stderr)
        return 0
    before = folder_bytes(output)
    libraries = [str(p) for p in output.rglob("*.so*") if p.is_file()]
    subprocess.run([strip, "--strip-unneeded", *libraries], check=True)
    return before - folder_bytes(output)


def heaviest(output: Path, count: int = 8) -> list[tuple[str, int]]:
    sizes = [(p.name, folder_bytes(p) if p.is_dir() else p.stat().st_size) for p in output.iterdir()]
    return sorted(sizes, key=lambda item: -item[1])[:count]


def build(output: Path, strip: bool = True) -> int:
    if output.exists():
        shutil.rmtree(output)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(output)]
    run([*pip, *PLATFORM, "-r", str(REQUIREMENTS)])
    run([*pip, "--no-deps", str(ROOT)])
    removed = prune(output)
    stripped = strip_libraries(output) if strip else 0
    size = folder_bytes(output)
    print(f"pruned {removed / 2**20:.1f} MB, stripped {stripped / 2**20:.1f} MB: {size / 2**20:.1f} MB unzipped "
          f"({size / LAMBDA_UNZIPPED_LIMIT:.0%} of Lambda's 250 MB)")
    if size > LAMBDA_UNZIPPED_LIMIT:
        weights = ", ".join(f"{name} {n / 2**20:.0f} MB" for name, n in heaviest(output))
        raise SystemExit(f"the bundle is {(size - LAMBDA_UNZIPPED_LIMIT) / 2**20:.1f} MB over Lambda's 250 MB: {weights}")
    return size


def zip_folder(folder: Path, archive: Path) -> int:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder))
    return archive.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "build" / "lambda", help="bundle folder (CodeUri of the SAM template)")
    parser.add_argument("--zip", type=Path, help="also write the bundle as this zip file")
    parser.add_argument("--no-strip", action="store_true", help="keep debug symbols in shared libraries")
    args = parser.parse_args()
    build(args.output, strip=not args.no_strip)
    if args.zip:
        print(f"{args.zip}: {zip_folder(args.output, args.zip) / 2**20:.1f} MB zipped")


if __name__ == "__main__":
    main()
