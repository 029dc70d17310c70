"""Names a job YAML may use for its response model and local model.

A built-in name (``sentiment``, ``vader``) or an importable ``module:attribute``, so a new
enrichment job needs a YAML file and a pydantic model, and no change here.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel

RESPONSE_MODELS = {"sentiment": "social_enrich.inference.response_models:Sentiment"}
LOCAL_MODELS = {"vader": "social_enrich.inference.local_sentiment:VaderSentimentModel"}


class PluginError(ValueError):
    """A response_format or local_model that cannot be resolved."""


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
    if not (isinstance(model, type) and callable(getattr(model, "score", None))):
        raise PluginError(f"local_model '{reference}' must be a class with a score(fields, text) method")
    return model
