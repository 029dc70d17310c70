"""The Dockerfile, checked without Docker (these machines have none): parsed with dockerfile-parse.

What a build would need and what the image promises: pinned bases, a non-root user, the project
installed from pyproject.toml, a default command serving the code location that workspace files and
dagster_cloud.yaml name, and build inputs that exist and that .dockerignore lets through.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[1]
MODULE, LOCATION = "social_enrich.definitions", "social_enrich"


@pytest.fixture(scope="module")
def parser() -> DockerfileParser:
    return DockerfileParser(path=str(REPO / "Dockerfile"))


def stages(parser: DockerfileParser) -> list[list[dict[str, Any]]]:
    """Instructions grouped by stage (each starts with its FROM); comments dropped."""
    grouped: list[list[dict[str, Any]]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            grouped.append([])
        if instruction["instruction"] != "COMMENT" and grouped:
            grouped[-1].append(instruction)
    return grouped


def values(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def from_image(value: str) -> tuple[str, str | None]:
    """`image[:tag][@digest] [AS name]` -> (image reference, stage name)."""
    words = value.split()
    words = [w for w in words if not w.startswith("--platform=")]
    name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
    return words[0], name


def copies(stage: list[dict[str, Any]]) -> list[tuple[list[str], str, str | None]]:
    """Each COPY as (sources, destination, --from stage)."""
    found = []
    for value in values(stage, "COPY"):
        words = shlex.split(value)
        source_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
        paths = [w for w in words if not w.startswith("--")]
        found.append((paths[:-1], paths[-1], source_stage))
    return found


def test_every_base_image_is_pinned_and_the_same(parser):
    bases = [from_image(stage[0]["value"]) for stage in stages(parser)]
    assert len(bases) >= 2, "expected a multi-stage build (build, then a slim runtime)"
    stage_names = {name for _, name in bases if name}
    images = [image for image, _ in bases if image not in stage_names]
    for image in images:
        assert "$" not in image, f"{image}: a build argument could swap in an unpinned base"
        digest = re.search(r"@sha256:[0-9a-f]{64}$", image)
        name = image.split("@")[0].rsplit("/", 1)[-1]  # a registry host may carry a :port
        tag = name.split(":", 1)[1] if ":" in name else None
        assert digest or (tag and re.match(r"\d+\.\d+\.\d+(\D|$)", tag)), f"{image}: pin a full X.Y.Z version or a digest"
        assert tag != "latest"
    # The runtime stage runs the virtualenv built in the first: same interpreter, so the same base.
    assert len(set(images)) == 1, images


def test_the_runtime_stage_runs_as_a_non_root_numeric_user(parser):
    final = stages(parser)[-1]
    users = values(final, "USER")
    assert users, "the final stage sets no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "a numeric UID lets orchestrators enforce runAsNonRoot without /etc/passwd"
    # ... and that UID exists in the image (created in this stage), so tools that look it up work.
    assert any(f"--uid {user}" in run for run in values(final, "RUN"))


def test_the_project_is_installed_from_pyproject_not_editable(parser):
    build = stages(parser)[0]
    copied = [source for sources, _, _ in copies(build) for source in sources]
    assert "pyproject.toml" in copied and "social_enrich" in copied
    installs = [run for run in values(build, "RUN") if "pip install" in run]
    assert installs and all(re.search(r"pip install [^&;]*\.(\s|$)", run) for run in installs), installs
    assert not any(" -e " in f" {run} " or "--editable" in run for run in installs)
    # The runtime stage takes only the installed virtualenv, not the source tree.
    final = stages(parser)[-1]
    assert [(sources, source_stage) for sources, _, source_stage in copies(final) if source_stage] == [(["/opt/venv"], "build")]


def test_the_default_command_serves_the_code_location_of_the_workspace_files(parser):
    command = json.loads(parser.cmd) if parser.cmd.startswith("[") else shlex.split(parser.cmd)
    assert command[:3] == ["dagster", "code-server", "start"]
    assert command[command.index("-m") + 1] == MODULE
    assert command[command.index("--location-name") + 1] == LOCATION
    port = int(command[command.index("-p") + 1])
    assert str(port) in values(stages(parser)[-1], "EXPOSE")[0].split()
    assert command[command.index("-h") + 1] == "0.0.0.0"  # reachable from outside the container

    (local,) = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"]
    assert local["python_module"] == {"module_name": MODULE, "location_name": LOCATION}
    (production,) = yaml.safe_load((REPO / "deploy" / "workspace.yaml").read_text())["load_from"]
    assert production["grpc_server"]["port"] == port
    assert production["grpc_server"]["location_name"] == LOCATION
    (cloud,) = yaml.safe_load((REPO / "dagster_cloud.yaml").read_text())["locations"]
    assert (cloud["location_name"], cloud["code_source"]["module_name"]) == (LOCATION, MODULE)


def test_dagster_home_holds_the_production_instance_and_workspace(parser):
    final = stages(parser)[-1]
    home = parser.envs["DAGSTER_HOME"]
    targets = {destination: sources for sources, destination, source_stage in copies(final) if not source_stage}
    assert targets[f"{home}/dagster.yaml"] == ["deploy/dagster.yaml"]
    assert targets[f"{home}/workspace.yaml"] == ["deploy/workspace.yaml"]
    # dagster-webserver and dagster-daemon read workspace.yaml from their working directory.
    assert values(final, "WORKDIR")[-1] == home
    assert parser.envs["SOCIAL_ENRICH_HOME"]
    assert parser.envs["PATH"].startswith("/opt/venv/bin:")


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rules, enough for this file: `**` any folders, `*` within a name, a match on a
    folder covers what is inside it, and a later `!pattern` re-includes."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        regex = re.escape(body.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        if re.fullmatch(f"{regex}(/.*)?", path):
            result = not negate
    return result


def test_copied_files_exist_and_are_not_dockerignored(parser):
    patterns = dockerignore_patterns()
    for stage in stages(parser):
        for sources, _, source_stage in copies(stage):
            if source_stage:
                continue
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
                assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    assert not ignored("social_enrich/defs/sentiment/defs.yaml", patterns)  # package data the install needs


@pytest.mark.parametrize("path", [".venv/bin/python", ".git/HEAD", ".social_enrich/catalog.db",
                                  "social_enrich_tests/test_assets.py", "social_enrich/__pycache__/x.cpython-311.pyc",
                                  "social_enrich.egg-info/PKG-INFO", ".pytest_cache/v"])
def test_dockerignore_keeps_local_state_and_tests_out(path):
    assert ignored(path, dockerignore_patterns())


def build_context(parser: DockerfileParser, folder: Path) -> Path:
    """The build stage's WORKDIR after its COPY instructions: what Docker would send (.dockerignore
    applied) and copy there, in `folder`."""
    patterns = dockerignore_patterns()
    for sources, destination, source_stage in copies(stages(parser)[0]):
        assert source_stage is None and not destination.startswith("/"), destination  # relative to WORKDIR
        for source in sources:
            files = [REPO / source] if (REPO / source).is_file() else sorted((REPO / source).rglob("*"))
            for path in files:
                relative = path.relative_to(REPO).as_posix()
                if not path.is_file() or ignored(relative, patterns):
                    continue
                target = folder / destination / (path.name if destination.endswith("/") else path.relative_to(REPO / source))
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    return folder


def test_the_image_installs_no_azure_openai_emulator(parser, tmp_path: Path):
    """The build stage's `pip install .`, run on the build context: the emulator (a test double) stays
    out of the image; the local Lambda runner stays, as the local profile loads it."""
    context = build_context(parser, tmp_path / "src")
    site = tmp_path / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--target", str(site), str(context)], check=True, timeout=300)
    installed = [p.relative_to(site).as_posix() for p in (site / "social_enrich").rglob("*") if p.is_file()]
    assert "social_enrich/definitions.py" in installed and "social_enrich/defs/sentiment/defs.yaml" in installed
    assert "social_enrich/devtools/local_lambda_resource.py" in installed
    assert [f for f in installed if "azure_openai_emulator" in f] == []


def test_the_build_command_is_documented():
    assert "docker build -t social-enrich ." in (REPO / "deploy" / "README.md").read_text()
