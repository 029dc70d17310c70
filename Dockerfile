# One image that serves the social_enrich code location (and can run the webserver or daemon).
# Build: docker build -t social-enrich .
# Serve: docker run -p 4000:4000 social-enrich
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY social_enrich ./social_enrich
RUN pip install --no-cache-dir .

FROM python:3.11.11-slim-bookworm
RUN useradd --create-home --uid 10001 dagster
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    DAGSTER_HOME=/home/dagster/dagster_home \
    SOCIAL_ENRICH_HOME=/home/dagster/state
USER dagster
WORKDIR /home/dagster
RUN mkdir -p "$DAGSTER_HOME" "$SOCIAL_ENRICH_HOME"
EXPOSE 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "social_enrich.definitions"]
