"""Azure OpenAI key from an environment variable or AWS Secrets Manager (moto in server mode on loopback)."""

from __future__ import annotations

import json
import logging
import socket
import uuid

import boto3
import pytest

from social_enrich_tests.moto_aws import REGION, aws_env, moto_url  # noqa: F401 (fixtures)
from social_enrich.inference.credentials import AzureCredentials, CredentialsError, resolve_credentials

KEY = "sk-test-0123456789abcdef-SECRET"
ENDPOINT = "https://example-name.openai.azure.com"

def _create_secret(*, string: str | None = None, binary: bytes | None = None) -> str:
    name = f"prod/openai-{uuid.uuid4().hex[:8]}"  # moto's state is shared by the module's server
    client = boto3.client("secretsmanager")
    if string is not None:
        client.create_secret(Name=name, SecretString=string)
    else:
        client.create_secret(Name=name, SecretBinary=binary)
    return name


def _error_texts(e: BaseException) -> str:
    """str and repr of the exception, its args, and everything it chains to."""
    texts: list[str] = []
    seen: BaseException | None = e
    while seen is not None:
        texts += [str(seen), repr(seen), *map(repr, seen.args)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(texts)


def _resolve_error(monkeypatch: pytest.MonkeyPatch, secret_name: str, *, must_not_contain: str = KEY) -> CredentialsError:
    monkeypatch.setenv("OPENAI_SECRET_NAME", secret_name)
    with pytest.raises(CredentialsError) as info:
        resolve_credentials()
    e = info.value
    assert e.__cause__ is None and e.__context__ is None
    assert must_not_contain not in _error_texts(e)
    assert secret_name in str(e)
    return e


# --- where the key comes from -------------------------------------------------------------------


def test_env_var_wins_over_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "env-key")
    monkeypatch.setenv("OPENAI_SECRET_NAME", "no-such-secret-never-fetched")
    creds = resolve_credentials()
    assert creds == AzureCredentials(api_key="env-key", endpoint=None, source="environment variable AZURE_OPENAI_API_KEY",
                                     setting="$AZURE_OPENAI_API_KEY")


def test_custom_env_var_and_explicit_environ() -> None:
    creds = resolve_credentials("MY_KEY", environ={"MY_KEY": " k1 \n"})
    assert (creds.api_key, creds.endpoint, creds.source, creds.setting) == ("k1", None, "environment variable MY_KEY", "$MY_KEY")


def test_secret_used_when_env_var_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    name = _create_secret(string=json.dumps({"OPENAI_API_KEY": KEY, "OPENAI_API_BASE": ENDPOINT}))
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "")  # empty counts as unset
    monkeypatch.setenv("OPENAI_SECRET_NAME", name)
    creds = resolve_credentials()
    assert (creds.api_key, creds.endpoint) == (KEY, ENDPOINT)
    assert creds.source == f"AWS Secrets Manager secret {name!r}"
    assert creds.setting == f"OPENAI_API_KEY in AWS Secrets Manager secret {name!r}"


def test_secret_without_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    name = _create_secret(string=json.dumps({"OPENAI_API_KEY": KEY, "other": 1}))
    monkeypatch.setenv("OPENAI_SECRET_NAME", name)
    creds = resolve_credentials()
    assert (creds.api_key, creds.endpoint) == (KEY, None)


def test_secret_name_from_explicit_environ() -> None:
    name = _create_secret(string=json.dumps({"OPENAI_API_KEY": KEY}))
    assert resolve_credentials(environ={"OPENAI_SECRET_NAME": name}).api_key == KEY


def test_repr_and_str_hide_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    name = _create_secret(string=json.dumps({"OPENAI_API_KEY": KEY, "OPENAI_API_BASE": ENDPOINT}))
    monkeypatch.setenv("OPENAI_SECRET_NAME", name)
    creds = resolve_credentials()
    for text in (repr(creds), str(creds), f"{creds}", f"{creds!r}"):
        assert KEY not in text
        assert name in text
    assert ENDPOINT in repr(creds)


def test_botocore_debug_logging_does_not_log_the_secret(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    name = _create_secret(string=json.dumps({"OPENAI_API_KEY": KEY}))
    monkeypatch.setenv("OPENAI_SECRET_NAME", name)
    with caplog.at_level(logging.DEBUG):
        assert resolve_credentials().api_key == KEY
    assert "Response headers" in caplog.text  # botocore did log at DEBUG ...
    assert KEY not in caplog.text  # ... but not the response body
    assert logging.getLogger("botocore.parsers").filters == []  # and the filter is gone afterwards


# --- errors -------------------------------------------------------------------------------------


def test_neither_source_configured() -> None:
    with pytest.raises(CredentialsError) as info:
        resolve_credentials(environ={})
    assert "$AZURE_OPENAI_API_KEY" in str(info.value) and "$OPENAI_SECRET_NAME" in str(info.value)


def test_secret_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    e = _resolve_error(monkeypatch, "prod/does-not-exist")
    assert "not found" in str(e)


def test_other_client_error_gives_code_and_name(monkeypatch: pytest.MonkeyPatch) -> None:
    name = _create_secret(string=json.dumps({"OPENAI_API_KEY": KEY}))
    boto3.client("secretsmanager").delete_secret(SecretId=name)  # scheduled deletion: InvalidRequestException
    e = _resolve_error(monkeypatch, name)
    assert "InvalidRequestException" in str(e)


@pytest.mark.parametrize(
    ("secret_string", "expected"),
    [
        pytest.param(KEY, "not valid JSON", id="raw-key"),
        pytest.param('{"OPENAI_API_KEY": "' + KEY + '"', "not valid JSON", id="truncated-json"),
        pytest.param(json.dumps([KEY]), "not an object", id="list"),
        pytest.param(json.dumps(KEY), "not an object", id="json-string"),
        pytest.param(json.dumps({"openai_api_key": KEY}), "no field OPENAI_API_KEY", id="wrong-case"),
        pytest.param(json.dumps({"OPENAI_API_KEY": "", "OPENAI_API_BASE": ENDPOINT}), "OPENAI_API_KEY is empty", id="empty"),
        pytest.param(json.dumps({"OPENAI_API_KEY": [KEY]}), "OPENAI_API_KEY is empty or not a string", id="not-a-string"),
        pytest.param(json.dumps({"OPENAI_API_KEY": KEY, "OPENAI_API_BASE": 3}), "OPENAI_API_BASE is not a string", id="bad-base"),
    ],
)
def test_malformed_secret_names_secret_and_field_never_the_value(monkeypatch: pytest.MonkeyPatch, secret_string: str, expected: str) -> None:
    name = _create_secret(string=secret_string)
    e = _resolve_error(monkeypatch, name)
    assert expected in str(e)


def test_binary_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    name = _create_secret(binary=KEY.encode())
    e = _resolve_error(monkeypatch, name)
    assert "SecretBinary" in str(e)


def test_unreachable_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on once this socket closes
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    e = _resolve_error(monkeypatch, "prod/openai")
    assert "cannot reach AWS Secrets Manager" in str(e) and f"127.0.0.1:{closed_port}" in str(e)


def test_no_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    e = _resolve_error(monkeypatch, "prod/openai")
    assert "AWS_REGION" in str(e)


def test_aws_region_alone_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    name = _create_secret(string=json.dumps({"OPENAI_API_KEY": KEY}))
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", REGION)  # as the no-region error tells the user to
    monkeypatch.setenv("OPENAI_SECRET_NAME", name)
    assert resolve_credentials().api_key == KEY


def test_aws_region_wins_over_aws_default_region(monkeypatch: pytest.MonkeyPatch) -> None:
    # The secret exists only in eu-west-1: found only if $AWS_REGION is the one used, as in the AWS SDKs.
    name = f"prod/openai-{uuid.uuid4().hex[:8]}"
    boto3.client("secretsmanager", region_name="eu-west-1").create_secret(Name=name, SecretString=json.dumps({"OPENAI_API_KEY": KEY}))
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("OPENAI_SECRET_NAME", name)
    assert resolve_credentials().api_key == KEY


def test_no_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    e = _resolve_error(monkeypatch, "prod/openai")
    assert "NoCredentialsError" in str(e) and "AWS_ACCESS_KEY_ID" in str(e)


def test_unknown_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "nope")
    e = _resolve_error(monkeypatch, "prod/openai")
    assert "ProfileNotFound" in str(e)


# --- end to end: a materialization whose key and endpoint come only from the secret --------------


def test_a_partition_is_scored_with_the_key_and_endpoint_from_the_secret(
    monkeypatch: pytest.MonkeyPatch, seeded, catalog, instance, caplog: pytest.LogCaptureFixture
) -> None:
    from social_enrich.devtools.azure_openai_emulator import AzureOpenAIEmulator, EmulatorSettings
    from social_enrich_tests.dagster_helpers import materialization_metadata, materialize_day

    with AzureOpenAIEmulator(EmulatorSettings(api_key=KEY, deployments=("gpt-4o-mini",))) as emulator:
        name = _create_secret(string=json.dumps({"OPENAI_API_KEY": KEY, "OPENAI_API_BASE": emulator.endpoint}))
        monkeypatch.setenv("OPENAI_SECRET_NAME", name)  # no AZURE_OPENAI_* variable at all
        monkeypatch.setenv("SOCIAL_ENRICH_ENV", "production")
        caplog.set_level(logging.DEBUG)  # from here on: every log line of the run, botocore's included

        result = materialize_day(instance, "2026-11-01")

        assert emulator.stats["by_status"].get(200, 0) > 0  # production: Azure OpenAI, at the endpoint the secret names
    metadata = materialization_metadata(result)
    assert metadata["model"] == "gpt-4o-mini" and metadata["posts_scored"] > 150
    logged = "\n".join(str(record) for record in instance.all_logs(result.run_id)) + caplog.text
    assert KEY not in logged and KEY not in json.dumps({k: str(v) for k, v in metadata.items()})
