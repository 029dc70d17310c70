"""The project's defs folder (Dagster Components): one folder per enrichment job holding its
``defs.yaml`` (an EnrichmentComponent, social_enrich/components.py), and hand-written Dagster
definitions in Python modules beside them, e.g. a downstream asset of an enrichment (see
social_enrich/downstream.py for the partitions and the catalog resource to use)."""
