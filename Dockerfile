# One image for every Dagster process of social_enrich (see deploy/README.md):
#   code location (default):  docker run -p 4000:4000 social-enrich
#   webserver:                docker run -p 3000:3000 social-enrich dagster-webserver -h 0.0.0.0 -p 3000
#   daemon:                   docker run social-enrich dagster-daemon run
#   run worker (ECS):         the EcsRunLauncher overrides the command with `dagster api execute_run ...`
# Build from the repository root: docker build -t social-enrich .

# The same base, pinned to a patch release, in both stages: the virtualenv copied across works only
# with the very interpreter that built it (/usr/local/bin/python). Written out rather than an ARG, so
# a build cannot silently swap in an unpinned tag.
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# pyproject.toml declares the dependencies and the package data (jobs/*.yaml); README.md is its `readme`.
COPY pyproject.toml README.md ./
COPY social_enrich ./social_enrich
# A regular (non-editable) install: the runtime image needs no source tree, only the virtualenv.
RUN pip install . \
    && pip check

FROM python:3.11.11-slim-bookworm AS runtime
# A fixed numeric UID/GID (10001), so orchestrators can check runAsNonRoot without resolving names.
RUN groupadd --gid 10001 dagster \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /opt/dagster --shell /usr/sbin/nologin dagster
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    SOCIAL_ENRICH_HOME=/var/lib/social_enrich \
    SOCIAL_ENRICH_ENV=production
# Instance and workspace configuration are baked in read-only (owned by root); the folders
# themselves belong to the app user, as Dagster writes small files under DAGSTER_HOME and
# social_enrich keeps its response cache and batch store under SOCIAL_ENRICH_HOME when
# SOCIAL_ENRICH_STATE_URL is empty (SQLite, one host; deployments set a postgresql:// URL instead).
RUN mkdir -p "$DAGSTER_HOME" "$SOCIAL_ENRICH_HOME" \
    && chown 10001:10001 "$DAGSTER_HOME" "$SOCIAL_ENRICH_HOME"
COPY deploy/dagster.yaml /opt/dagster/dagster_home/dagster.yaml
COPY deploy/workspace.yaml /opt/dagster/dagster_home/workspace.yaml
# The webserver and the daemon find workspace.yaml in their working directory.
WORKDIR /opt/dagster/dagster_home
USER 10001:10001
# 4000: the code location's gRPC server; 3000: the webserver when the image runs it.
EXPOSE 4000 3000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "social_enrich.definitions", "--location-name", "social_enrich"]
