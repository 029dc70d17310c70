"""Where the Azure OpenAI key comes from: an environment variable, or AWS Secrets Manager.

The project started as an AWS Lambda that read the key from Secrets Manager (secret named by
``$OPENAI_SECRET_NAME``, a JSON string with ``OPENAI_API_KEY`` and ``OPENAI_API_BASE``); deployments
that keep the key there work unchanged, while local runs can simply export a variable.

Precedence: the key variable (``$AZURE_OPENAI_API_KEY`` by default) if set and non-empty, else the
secret named by ``$OPENAI_SECRET_NAME``, else :class:`CredentialsError`. Nothing is cached: call
:func:`resolve_credentials` once per run.

The key never appears in a repr, an error message or an exception chain: errors name the setting,
the secret and the field, never a value (a malformed secret may well be a bare key).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)

from social_enrich.errors import SocialEnrichError

SECRET_NAME_VAR = "OPENAI_SECRET_NAME"
SECRET_KEY_FIELD = "OPENAI_API_KEY"
SECRET_ENDPOINT_FIELD = "OPENAI_API_BASE"

# One lookup per run: fail fast when the endpoint is unreachable, retry briefly when throttled.
_BOTO_CONFIG = Config(connect_timeout=5, read_timeout=10, retries={"mode": "standard", "max_attempts": 3})


class CredentialsError(SocialEnrichError, RuntimeError):
    """No usable Azure OpenAI key; the message says which setting or secret field to fix, never a value."""


@dataclass(frozen=True)
class AzureCredentials:
    """An Azure OpenAI key and, from a secret, its endpoint. The repr shows where the key came from, not the key."""

    api_key: str = field(repr=False)
    endpoint: str | None
    source: str
    setting: str  # where to fix the key, as error messages name it: "$AZURE_OPENAI_API_KEY", or the secret's field

    def __str__(self) -> str:
        return f"Azure OpenAI key from {self.source}"


def resolve_credentials(api_key_env_var: str = "AZURE_OPENAI_API_KEY", *, environ: Mapping[str, str] | None = None) -> AzureCredentials:
    """The key from ``$api_key_env_var``, else from the Secrets Manager secret named by ``$OPENAI_SECRET_NAME``.

    ``environ`` (default ``os.environ``) is read for those two variables only; boto3 takes the AWS
    region, credentials and endpoint (``AWS_ENDPOINT_URL_SECRETS_MANAGER``, ``AWS_ENDPOINT_URL``)
    from the process environment and AWS config files as usual, except that ``$AWS_REGION`` is
    honoured too (see :func:`_aws_region`).
    """
    env = os.environ if environ is None else environ
    key = env.get(api_key_env_var, "").strip()
    if key:
        return AzureCredentials(api_key=key, endpoint=None, source=f"environment variable {api_key_env_var}",
                                setting=f"${api_key_env_var}")
    secret_name = env.get(SECRET_NAME_VAR, "").strip()
    if not secret_name:
        raise CredentialsError(
            f"no Azure OpenAI key: set ${api_key_env_var} to the key, or ${SECRET_NAME_VAR} to the name of an AWS "
            f"Secrets Manager secret holding JSON with {SECRET_KEY_FIELD} (and optionally {SECRET_ENDPOINT_FIELD})"
        )
    secret_string = _fetch_secret_string(secret_name)
    parsed = _parse_secret(secret_string, secret_name)
    del secret_string  # keep the raw secret out of this frame's locals if we raise below
    if isinstance(parsed, str):
        raise CredentialsError(parsed)
    key, endpoint = parsed
    source = f"AWS Secrets Manager secret {secret_name!r}"
    return AzureCredentials(api_key=key, endpoint=endpoint, source=source, setting=f"{SECRET_KEY_FIELD} in {source}")


def _fetch_secret_string(secret_name: str) -> str:
    """The secret's SecretString. Errors are raised outside the ``except`` blocks, so they chain to nothing."""
    problem: str
    try:
        client = boto3.session.Session(region_name=_aws_region()).client("secretsmanager", config=_BOTO_CONFIG)
        with _no_response_body_logging():
            response = client.get_secret_value(SecretId=secret_name)
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code") or "unknown")
        if code == "ResourceNotFoundException":
            problem = (f"AWS Secrets Manager secret {secret_name!r} (from ${SECRET_NAME_VAR}) was not found: check the name "
                       f"and the AWS region/account")
        else:
            problem = (f"AWS Secrets Manager refused to return secret {secret_name!r} (from ${SECRET_NAME_VAR}): {code}; "
                       f"check the secret's permissions (secretsmanager:GetSecretValue, and its KMS key) and state")
    except NoRegionError:
        problem = (f"cannot read AWS Secrets Manager secret {secret_name!r} (from ${SECRET_NAME_VAR}): no AWS region; "
                   f"set $AWS_REGION or $AWS_DEFAULT_REGION (or region in the AWS config profile)")
    except (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError, ProfileNotFound) as e:
        problem = (f"cannot read AWS Secrets Manager secret {secret_name!r} (from ${SECRET_NAME_VAR}): no usable AWS "
                   f"credentials ({type(e).__name__}); set $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY, $AWS_PROFILE, "
                   f"or run with an IAM role")
    except (BotoConnectionError, HTTPClientError) as e:
        # botocore's message here is the endpoint URL and the transport error: no secret content exists yet.
        problem = (f"cannot reach AWS Secrets Manager for secret {secret_name!r} (from ${SECRET_NAME_VAR}): {e}; "
                   f"check the network, region and any $AWS_ENDPOINT_URL_SECRETS_MANAGER / $AWS_ENDPOINT_URL")
    except BotoCoreError as e:
        problem = (f"cannot read AWS Secrets Manager secret {secret_name!r} (from ${SECRET_NAME_VAR}): "
                   f"{type(e).__name__}; check the AWS configuration")
    else:
        secret_string = response.get("SecretString")
        if isinstance(secret_string, str):
            return secret_string
        if response.get("SecretBinary") is not None:
            problem = (f"AWS Secrets Manager secret {secret_name!r} (from ${SECRET_NAME_VAR}) holds binary data "
                       f"(SecretBinary); store a JSON SecretString with {SECRET_KEY_FIELD} instead")
        else:
            problem = f"AWS Secrets Manager secret {secret_name!r} (from ${SECRET_NAME_VAR}) has no SecretString"
        del response
    raise CredentialsError(problem)


def _aws_region() -> str | None:
    """$AWS_REGION, as the AWS SDKs and Lambda set it (botocore reads only $AWS_DEFAULT_REGION); None: boto3's
    own lookup ($AWS_DEFAULT_REGION, then the config profile)."""
    return os.environ.get("AWS_REGION", "").strip() or None


def _parse_secret(secret_string: str, secret_name: str) -> tuple[str, str | None] | str:
    """(key, endpoint) from the secret's JSON, or why it is unusable (a message that never quotes the secret)."""
    where = f"AWS Secrets Manager secret {secret_name!r} (from ${SECRET_NAME_VAR})"
    expected = f"store a JSON object with a non-empty string {SECRET_KEY_FIELD} (and optionally {SECRET_ENDPOINT_FIELD})"
    try:
        payload = json.loads(secret_string)
    except ValueError:  # JSONDecodeError keeps the whole document in .doc: never let it escape
        return f"{where} is not valid JSON; {expected}"
    if not isinstance(payload, dict):
        return f"{where} is JSON but not an object; {expected}"
    key = payload.get(SECRET_KEY_FIELD)
    if key is None:
        return f"{where} has no field {SECRET_KEY_FIELD}; {expected}"
    if not isinstance(key, str) or not key.strip():
        return f"{where} field {SECRET_KEY_FIELD} is empty or not a string; {expected}"
    endpoint = payload.get(SECRET_ENDPOINT_FIELD)
    if endpoint is not None and not isinstance(endpoint, str):
        return f"{where} field {SECRET_ENDPOINT_FIELD} is not a string; set it to https://<name>.openai.azure.com or remove it"
    return key.strip(), (endpoint.strip() or None) if endpoint is not None else None


class _DropResponseBodies(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Response body")


@contextmanager
def _no_response_body_logging() -> Iterator[None]:
    """botocore logs every response body at DEBUG (botocore.parsers); for GetSecretValue that is the secret."""
    logger = logging.getLogger("botocore.parsers")
    drop = _DropResponseBodies()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
