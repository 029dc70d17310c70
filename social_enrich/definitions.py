"""The one Definitions object: the components of the package's defs folder (one enrichment job per
folder, plus any hand-written assets there), the jobs of $SOCIAL_ENRICH_JOBS_DIR, and the resources of
the environment's profile."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from types import ModuleType

import dagster as dg

import social_enrich.defs
from social_enrich.components import enrichment_definitions
from social_enrich.config import discover_job_configs
from social_enrich.dead_runs import executor_freeing_dead_runs
from social_enrich.environment import extra_jobs_dirs
from social_enrich.resources import environment_resources

# Dagster marks two features this project relies on as beta: observable source assets (a gold table's
# snapshot is its data version) and backfill policies (a range of days in one run). Said for every
# asset by every Dagster CLI and run worker that loads this module, it buries the run's own lines.
# Other beta warnings still show.
for feature in ("Function `observable_source_asset`", "Parameter `backfill_policy` of function `asset`"):
    warnings.filterwarnings("ignore", message=f"{re.escape(feature)} is currently in beta", category=dg.BetaWarning)

PROJECT_ROOT = Path(social_enrich.defs.__file__).parents[2]  # the folder holding the package


def load_defs_folder(defs_module: ModuleType, project_root: Path) -> dg.Definitions:
    """The components and hand-written modules of a defs folder, as `dg` loads them."""
    with warnings.catch_warnings():
        # Dagster 1.13.27's loader warns about its own internals (beta code references, preview module
        # loading, pydantic's deprecated parse_obj_as): nothing a user of this project can act on.
        for category in (dg.BetaWarning, dg.PreviewWarning, DeprecationWarning):
            warnings.simplefilter("ignore", category)
        return dg.ComponentTree.from_module(defs_module=defs_module, project_root=project_root).build_defs()


def build_definitions(job_dirs: list[Path] | None = None) -> dg.Definitions:
    """The project's definitions; with ``job_dirs``, only the jobs in those folders (job YAMLs or
    component folders), instead of the defs folder and $SOCIAL_ENRICH_JOBS_DIR."""
    if job_dirs is None:
        # A job in $SOCIAL_ENRICH_JOBS_DIR replaces the defs folder's job of the same name (its component builds nothing).
        parts = [load_defs_folder(social_enrich.defs, PROJECT_ROOT),
                 *(enrichment_definitions(job) for job in discover_job_configs(extra_jobs_dirs()))]
    else:
        parts = [enrichment_definitions(job) for job in discover_job_configs(job_dirs)]
    return dg.Definitions.merge(
        *parts,
        dg.Definitions(
            resources=environment_resources(),  # the profile $SOCIAL_ENRICH_ENV names
            # Dagster's default executor, which first fails runs of this machine whose process died
            # (SIGKILL, OOM) and frees their pool slots: with no daemon, nothing else would.
            executor=executor_freeing_dead_runs,
        ),
    )


@dg.definitions
def defs() -> dg.Definitions:
    # Loaded lazily by Dagster, so job YAMLs and the environment are read at load time, not at import.
    return build_definitions()
