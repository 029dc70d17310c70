"""``python -m social_enrich.devtools.azure_openai_emulator``: serve until Ctrl-C or SIGTERM.

The endpoint is printed alone on the first line of stdout, so a script can start the emulator on
port 0 and read where it landed.
"""

from __future__ import annotations

import argparse
import signal
import time
from typing import Any

from .faults import RANDOM_FAULTS, share_field
from .server import AzureOpenAIEmulator
from .settings import EmulatorSettings, SettingsError

_DEFAULTS = EmulatorSettings()

# Every setting that has a flag: (flag, settings field, type, help).  Defaults come from EmulatorSettings.
_SETTING_FLAGS: list[tuple[str, str, type, str]] = [
    ("--api-key", "api_key", str, "key accepted as api-key header or bearer token"),
    ("--fail-all-with", "fail_all_with", int, "HTTP status for every chat request"),
    ("--rpm", "requests_per_minute", int, "requests per minute per deployment (default: unlimited)"),
    ("--tpm", "tokens_per_minute", int, "rate-limit tokens per minute per deployment (default: unlimited)"),
    ("--rate-window-seconds", "rate_window_seconds", float, "sliding window the per-minute limits apply over"),
    ("--latency-seconds", "latency_seconds", float, "base delay of every successful answer"),
    ("--latency-per-output-token-seconds", "latency_per_output_token_seconds", float, "delay per completion token"),
    ("--latency-jitter", "latency_jitter", float, "latency multiplied by a factor uniform in [1-j, 1+j], 0..1"),
    ("--slow-seconds", "slow_seconds", float, "extra delay for EMULATOR_FAULT:slow"),
    *[
        (f"--share-{kind.replace('_', '-')}", share_field(kind), float, f"share (0..1) of requests with a {kind} fault")
        for kind in RANDOM_FAULTS
    ],
    ("--timeout-hold-seconds", "timeout_hold_seconds", float, "how long a timeout fault holds the request"),
    ("--seed", "seed", int, "seed for random faults, jitter and batch outcomes (default: fresh)"),
    ("--batch-completion-seconds", "batch_completion_seconds", float, "how long a batch runs (completed at 1.1x)"),
    ("--batch-share-error-lines", "batch_share_error_lines", float, "share (0..1) of batch lines answered as 500s"),
    ("--batch-share-expired", "batch_share_expired", float, "share (0..1) of batches that expire"),
    ("--batch-share-failed", "batch_share_failed", float, "share (0..1) of batches that fail validation"),
    (
        "--batch-expired-completed-share", "batch_expired_completed_share", float,
        "share (0..1) of its lines an expired or cancelled batch answers",
    ),  # fmt: skip
]
_FLAG_OF = {name: flag for flag, name, _, _ in _SETTING_FLAGS} | {"deployments": "--deployment"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m social_enrich.devtools.azure_openai_emulator",
        description="Loopback Azure OpenAI emulator: chat completions, Files and Global Batch.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--deployment", action="append", help="repeatable; default gpt-4o-mini")
    for flag, name, kind, help_text in _SETTING_FLAGS:
        default = getattr(_DEFAULTS, name)
        parser.add_argument(flag, dest=name, type=kind, default=default, help=f"{help_text} (default: {default})")
    return parser


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    values = {name: getattr(args, name) for _, name, _, _ in _SETTING_FLAGS}
    if args.deployment:
        values["deployments"] = tuple(args.deployment)
    try:
        settings = EmulatorSettings(**values)
    except SettingsError as exc:
        # argparse's own format, naming the flags rather than the settings fields.
        flags = ", ".join(_FLAG_OF.get(name, name) for name in exc.fields)
        parser.error(f"argument {flags}: {exc.problem}")
    # SIGTERM takes the same clean path as Ctrl-C, so the socket is closed properly.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    with AzureOpenAIEmulator(settings, host=args.host, port=args.port) as emulator:
        print(emulator.endpoint, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0
