"""Build the provider an environment names, from the open registry (plugins.PROVIDERS or module:Class).

No provider is special here: each class validates its own config and builds itself for a job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from social_enrich.config import JobConfig
from social_enrich.environment import provider_choice
from social_enrich.errors import SocialEnrichError
from social_enrich.inference.provider import Provider
from social_enrich.plugins import PluginError, resolve_provider


class ProviderConfigError(SocialEnrichError, ValueError):
    """The environment's provider cannot be resolved or its config is invalid; the message names the field."""


def provider_config(name: str, config: Mapping[str, Any]) -> tuple[type, Any]:
    """The provider class and its validated config: checked when the definitions load, before any run."""
    try:
        provider = resolve_provider(name)
    except PluginError as e:
        raise ProviderConfigError(str(e)) from None
    try:
        return provider, provider.Config.model_validate(dict(config))
    except ValidationError as e:
        fields = "; ".join(f"{'.'.join(map(str, item['loc'])) or '(top level)'}: {item['msg']}" for item in e.errors())
        raise ProviderConfigError(f"provider '{name}': invalid config: {fields}") from None


def build_provider(name: str, config: Mapping[str, Any], job: JobConfig) -> Provider:
    provider, settings = provider_config(name, config)
    return provider.from_config(settings, job)


def environment_provider(job: JobConfig) -> Provider:
    """The provider this environment runs (environment.provider_choice), built for the job."""
    return build_provider(*provider_choice(), job)
