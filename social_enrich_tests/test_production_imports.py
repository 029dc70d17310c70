"""Production code never imports social_enrich.devtools: only the local profile's resources choose the
local Lambda runner, and nothing outside the tests loads the Azure OpenAI emulator (which the wheel,
the image and the Lambda bundle leave out)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Every module of the package but devtools, then the Definitions as `dagster code-server -m
# social_enrich.definitions` loads them, then the Lambda handler; prints the devtools modules loaded.
# (pkgutil.walk_packages would import devtools itself, to look inside it.)
LOAD = """
import json, pkgutil, sys, importlib
def import_all(package):
    for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if module.name != "social_enrich.devtools":
            imported = importlib.import_module(module.name)
            if module.ispkg:
                import_all(imported)
import_all(importlib.import_module("social_enrich"))
from social_enrich.definitions import build_definitions
build_definitions()
import social_enrich.lambda_handler
print(json.dumps(sorted(m for m in sys.modules if m.startswith("social_enrich.devtools"))))
"""


def loaded_devtools(profile: str) -> list[str]:
    env = {**os.environ, "SOCIAL_ENRICH_ENV": profile,
           # Production's Azure OpenAI provider checks its settings at load; nothing listens there.
           "AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9", "AZURE_OPENAI_API_KEY": "x"}
    done = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_production_loads_no_devtools():
    assert loaded_devtools("production") == []


def test_the_local_profile_loads_the_local_lambda_runner_and_no_emulator():
    """The check above sees a devtools import: the local profile's resources make one."""
    assert loaded_devtools("local") == ["social_enrich.devtools", "social_enrich.devtools.local_lambda",
                                        "social_enrich.devtools.local_lambda_resource"]
