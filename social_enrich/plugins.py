"""Names a job or an environment may use for a response model, a local model or a model provider.

A built-in name (``sentiment``, ``vader``, ``azure_openai``) or an importable ``module:attribute``, so
a new enrichment job needs a YAML file and a pydantic model, and a new provider a class, and no change here.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel

RESPONSE_MODELS = {"sentiment": "social_enrich.inference.response_models:Sentiment"}
LOCAL_MODELS = {"vader": "social_enrich.inference.local_sentiment:VaderSentimentModel"}
PROVIDERS = {
    "local": "social_enrich.inference.local_sentiment:LocalProvider",
    "azure_openai": "social_enrich.inference.azure_openai:AzureOpenAIProvider",
    "azure_openai_pool": "social_enrich.inference.azure_pool:AzureOpenAIPoolProvider",
}


class PluginError(ValueError):
    """A response_format, local_model or provider that cannot be resolved."""


def _import(reference: str, kind: str, builtins: dict[str, str]) -> Any:
    target = builtins.get(reference, reference)
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        known = ", ".join(sorted(builtins))
        raise PluginError(f"unknown {kind} '{reference}': use one of [{known}] or 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PluginError(f"{kind} '{reference}': cannot import module '{module_name}': {e}") from e
    try:
        return getattr(module, attribute)
    except AttributeError as e:
        raise PluginError(f"{kind} '{reference}': module '{module_name}' has no '{attribute}'") from e


def resolve_response_model(reference: str) -> type[BaseModel]:
    model = _import(reference, "response_format", RESPONSE_MODELS)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise PluginError(f"response_format '{reference}' is not a pydantic model class")
    return model


def resolve_local_model(reference: str) -> type:
    model = _import(reference, "local_model", LOCAL_MODELS)
    if not (isinstance(model, type) and any(callable(getattr(model, m, None)) for m in ("score", "score_batch"))):
        raise PluginError(
            f"local_model '{reference}' must be a class with a score(fields, text) or a score_batch(posts) method"
        )
    return model


def resolve_provider(reference: str) -> type:
    """A provider class: its pydantic ``Config`` and ``from_config(config, job)`` (see inference/provider.py)."""
    provider = _import(reference, "provider", PROVIDERS)
    if not (isinstance(provider, type) and callable(getattr(provider, "from_config", None))
            and isinstance(getattr(provider, "Config", None), type) and issubclass(provider.Config, BaseModel)):
        raise PluginError(
            f"provider '{reference}' must be a class with a pydantic model Config and a classmethod from_config(config, job)"
        )
    return provider
