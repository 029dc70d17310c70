"""Global Batch's enqueued-token quota in the emulator: batches not final yet count against their
deployment's limit, and one that would pass it fails validation with token_limit_exceeded."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest
from openai.types import Batch

from social_enrich.devtools.azure_openai_emulator import (
    AzureOpenAIEmulator,
    EmulatorSettings,
    SettingsError,
)
from social_enrich.devtools.azure_openai_emulator.cli import main
from social_enrich.devtools.azure_openai_emulator.prompt import rate_limit_tokens
from social_enrich_tests.emulator_sdk import API_VERSION, DEPLOYMENT, sdk_client
from social_enrich_tests.test_emulator_batches import wait_for

API_KEY = "batch-quota-test-key"
OTHER = "gpt-4o"
# 40 characters (10 prompt tokens) plus max_tokens 90: each line enqueues exactly 100 tokens.
TEXT = "Rate this: I love the new camera a lot!!"
LINE_TOKENS = 100


@contextmanager
def running_emulator(**settings: Any) -> Iterator[AzureOpenAIEmulator]:
    settings = {"api_key": API_KEY, "deployments": (DEPLOYMENT, OTHER), "batch_completion_seconds": 1.0, "seed": 3,
                **settings}  # fmt: skip
    with AzureOpenAIEmulator(EmulatorSettings(**settings)) as emu:
        yield emu


@pytest.fixture
def emulator() -> Iterator[AzureOpenAIEmulator]:
    with running_emulator(batch_enqueued_token_limit=5 * LINE_TOKENS) as emu:
        yield emu


def lines(count: int, model: str = DEPLOYMENT, prefix: str = "req") -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": TEXT}], "max_tokens": 90}
    rows = [{"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/chat/completions", "body": body}
            for i in range(count)]  # fmt: skip
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def upload(client: openai.AzureOpenAI, data: bytes) -> str:
    return client.files.create(file=("in.jsonl", data), purpose="batch").id


def create(client: openai.AzureOpenAI, file_id: str) -> Batch:
    return client.batches.create(input_file_id=file_id, endpoint="/chat/completions", completion_window="24h")


def the_error(batch: Batch) -> Any:
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    return batch.errors.data[0]


def test_a_batch_past_the_limit_fails_while_another_is_in_progress_and_goes_through_after(emulator, client):
    first_file, second_file = upload(client, lines(3, prefix="first")), upload(client, lines(3, prefix="second"))

    first = create(client, first_file)
    assert emulator.enqueued_tokens(DEPLOYMENT) == 3 * LINE_TOKENS  # counted from creation, validating included
    refused = create(client, second_file)  # 300 + 300 > 500
    assert emulator.enqueued_tokens(DEPLOYMENT) == 3 * LINE_TOKENS  # the refused one is never enqueued

    failed = wait_for(client, refused.id)
    error = the_error(failed)
    assert error.code == "token_limit_exceeded" and error.line is None
    assert DEPLOYMENT in error.message and "limit of 500" in error.message
    assert "this batch has 300 tokens and 300 are already enqueued" in error.message
    assert failed.request_counts.total == 0 and failed.output_file_id is None

    assert wait_for(client, first.id).status == "completed"
    assert emulator.enqueued_tokens(DEPLOYMENT) == 0
    again = wait_for(client, create(client, second_file).id)  # the same file, once the first has finished
    assert again.status == "completed" and again.request_counts.completed == 3


def test_the_tokens_are_the_rate_limit_tokens_of_the_lines(emulator: AzureOpenAIEmulator, client):
    data = lines(2) + b"\n"  # blank lines count nothing
    create(client, upload(client, data))
    bodies = [json.loads(line)["body"] for line in data.splitlines() if line.strip()]
    assert emulator.enqueued_tokens(DEPLOYMENT) == sum(map(rate_limit_tokens, bodies)) == 2 * LINE_TOKENS
    stats = emulator.stats
    assert stats["enqueued_tokens"] == {DEPLOYMENT: 2 * LINE_TOKENS, OTHER: 0}
    emulator.reset_stats()  # state, not a counter
    assert emulator.stats["enqueued_tokens"][DEPLOYMENT] == 2 * LINE_TOKENS


def test_a_batch_alone_over_the_limit_fails(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    failed = wait_for(client, create(client, upload(client, lines(6))).id)
    assert the_error(failed).code == "token_limit_exceeded"
    assert "this batch has 600 tokens and 0 are already enqueued" in the_error(failed).message
    # Exactly at the limit is fine.
    assert wait_for(client, create(client, upload(client, lines(5))).id).status == "completed"


def test_deployments_have_their_own_quota(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.deployment_batch_limits = {OTHER: 2 * LINE_TOKENS}
    mine = create(client, upload(client, lines(4)))
    theirs = create(client, upload(client, lines(2, OTHER)))  # DEPLOYMENT's 400 don't count for OTHER
    too_many = create(client, upload(client, lines(1, OTHER)))  # OTHER's own limit: 200

    assert emulator.stats["enqueued_tokens"] == {DEPLOYMENT: 4 * LINE_TOKENS, OTHER: 2 * LINE_TOKENS}
    assert the_error(wait_for(client, too_many.id)).message.count(f"'{OTHER}'") == 1
    assert wait_for(client, theirs.id).status == wait_for(client, mine.id).status == "completed"

    emulator.settings.deployment_batch_limits = {OTHER: None}  # its own: unlimited, whatever the server-wide one
    assert wait_for(client, create(client, upload(client, lines(8, OTHER))).id).status == "completed"


def test_failed_and_cancelled_batches_count_nothing(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.script_batches("failed", "stuck")
    failed = create(client, upload(client, lines(5)))  # scripted to fail validation: never enqueued
    stuck = create(client, upload(client, lines(5)))  # in progress until cancelled: holds the whole quota
    assert emulator.enqueued_tokens(DEPLOYMENT) == 5 * LINE_TOKENS
    assert the_error(wait_for(client, failed.id)).code == "invalid_request"
    wait_for(client, stuck.id, ("in_progress",))
    assert the_error(wait_for(client, create(client, upload(client, lines(1))).id)).code == "token_limit_exceeded"

    assert client.batches.cancel(stuck.id).status == "cancelling"
    assert emulator.enqueued_tokens(DEPLOYMENT) == 0  # read again: cancelled
    assert wait_for(client, create(client, upload(client, lines(5))).id).status == "completed"


def test_without_a_limit_anything_goes():
    with running_emulator(batch_completion_seconds=0.2) as emu, sdk_client(emu, API_KEY) as client:
        big = [create(client, upload(client, lines(200))) for _ in range(3)]
        assert emu.enqueued_tokens(DEPLOYMENT) == 3 * 200 * LINE_TOKENS
        assert {wait_for(client, b.id).status for b in big} == {"completed"}


def test_enqueued_tokens_of_an_unknown_deployment_raises(emulator: AzureOpenAIEmulator):
    with pytest.raises(LookupError):
        emulator.enqueued_tokens("no-such")


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"batch_enqueued_token_limit": 0}, "batch_enqueued_token_limit"),
        ({"batch_enqueued_token_limit": 2.5}, "batch_enqueued_token_limit"),
        ({"batch_enqueued_token_limit": True}, "batch_enqueued_token_limit"),
        ({"deployment_batch_limits": {DEPLOYMENT: 0}}, "deployment_batch_limits"),
        ({"deployment_batch_limits": {DEPLOYMENT: "many"}}, "deployment_batch_limits"),
        ({"deployment_batch_limits": {"no-such": 100}}, "deployment_batch_limits and deployments"),
        ({"deployment_batch_limits": [DEPLOYMENT]}, "deployment_batch_limits"),
    ],
)
def test_batch_limit_settings_are_validated(settings: dict[str, Any], named: str):
    with pytest.raises(SettingsError, match=named):
        EmulatorSettings(deployments=(DEPLOYMENT, OTHER), **settings)


def test_batch_limit_of_prefers_the_deployment_entry():
    settings = EmulatorSettings(
        deployments=(DEPLOYMENT, OTHER), batch_enqueued_token_limit=1000, deployment_batch_limits={OTHER: None}
    )
    assert (settings.batch_limit_of(DEPLOYMENT), settings.batch_limit_of(OTHER)) == (1000, None)
    with pytest.raises(TypeError):
        settings.deployment_batch_limits[DEPLOYMENT] = 5  # type: ignore[index]


def test_batch_limit_flags_reach_the_running_emulator():
    command = [
        sys.executable, "-m", "social_enrich.devtools.azure_openai_emulator", "--port", "0", "--api-key", API_KEY,
        "--deployment", DEPLOYMENT, "--deployment", OTHER, "--batch-completion-seconds", "0.2",
        "--batch-enqueued-token-limit", str(2 * LINE_TOKENS), "--deployment-batch-limit", f"{OTHER}:",
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            endpoint = proc.stdout.readline().strip()
            assert endpoint.startswith("http://127.0.0.1:")
            with openai.AzureOpenAI(
                azure_endpoint=endpoint, api_key=API_KEY, api_version=API_VERSION, max_retries=0
            ) as client:
                over = wait_for(client, create(client, upload(client, lines(3))).id)
                unlimited = wait_for(client, create(client, upload(client, lines(3, OTHER))).id)
            assert the_error(over).code == "token_limit_exceeded" and unlimited.status == "completed"
            with urllib.request.urlopen(endpoint + "/stats", timeout=5) as response:
                assert json.load(response)["enqueued_tokens"] == {DEPLOYMENT: 0, OTHER: 0}
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("argv", "flags"),
    [
        (["--batch-enqueued-token-limit", "0"], "--batch-enqueued-token-limit"),
        (["--batch-enqueued-token-limit", "lots"], "--batch-enqueued-token-limit"),
        (["--deployment-batch-limit", f"{DEPLOYMENT}:0"], "--deployment-batch-limit"),
        (["--deployment-batch-limit", DEPLOYMENT], "--deployment-batch-limit"),
        (["--deployment-batch-limit", "no-such:5"], "--deployment-batch-limit, --deployment"),
    ],
)
def test_bad_batch_limit_flags_exit_naming_the_flag(argv: list[str], flags: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert f"argument {flags}:" in capsys.readouterr().err
