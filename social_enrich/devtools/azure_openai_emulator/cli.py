"""``python -m social_enrich.devtools.azure_openai_emulator``: serve until Ctrl-C or SIGTERM.

The endpoint is printed alone on the first line of stdout, so a script can start the emulator on
port 0 and read where it landed.  With ``--own-endpoints`` every deployment is served on a port
of its own too; ``GET <endpoint>/control/deployments`` lists them.
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
        "--batch-enqueued-token-limit", "batch_enqueued_token_limit", int,
        "tokens of not-yet-final batches a deployment may have enqueued (Azure: 1e9 for gpt-4o-mini)",
    ),
    (
        "--batch-expired-completed-share", "batch_expired_completed_share", float,
        "share (0..1) of its lines an expired or cancelled batch answers",
    ),  # fmt: skip
]
# Repeatable NAME:VALUE... flags building a per-deployment mapping: (flag, settings field, value count, help).
_DEPLOYMENT_FLAGS: list[tuple[str, str, int, str]] = [
    (
        "--deployment-limit", "deployment_limits", 2,
        "NAME:RPM:TPM, repeatable: that deployment's own limits instead of --rpm/--tpm (empty: unlimited)",
    ),
    (
        "--deployment-batch-limit", "deployment_batch_limits", 1,
        "NAME:TOKENS, repeatable: that deployment's own --batch-enqueued-token-limit (empty: unlimited)",
    ),
]  # fmt: skip
_FLAG_OF = (
    {name: flag for flag, name, _, _ in _SETTING_FLAGS}
    | {name: flag for flag, name, _, _ in _DEPLOYMENT_FLAGS}
    | {"deployments": "--deployment"}
)


def _deployment_values(count: int) -> Any:
    """The argparse type of a NAME:V1[:V2] flag: (name, values), each value an int or None when empty."""

    def parse(text: str) -> tuple[str, tuple[int | None, ...]]:
        name, *values = text.rsplit(":", count)
        if not name or len(values) != count:
            shape = ":".join(["NAME", *(["N"] * count)])
            raise argparse.ArgumentTypeError(f"expected {shape}, got {text!r}")
        try:
            return name, tuple(int(v) if v.strip() else None for v in values)
        except ValueError:
            raise argparse.ArgumentTypeError(f"values must be integers or empty, got {text!r}") from None

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m social_enrich.devtools.azure_openai_emulator",
        description="Loopback Azure OpenAI emulator: chat completions, Files and Global Batch.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--deployment", action="append", help="repeatable; default gpt-4o-mini")
    parser.add_argument(
        "--own-endpoints", action="store_true", help="serve each deployment on its own port too (outages can refuse it)"
    )
    for flag, name, kind, help_text in _SETTING_FLAGS:
        default = getattr(_DEFAULTS, name)
        parser.add_argument(flag, dest=name, type=kind, default=default, help=f"{help_text} (default: {default})")
    for flag, name, count, help_text in _DEPLOYMENT_FLAGS:
        metavar = help_text.split(",")[0]
        kind = _deployment_values(count)
        parser.add_argument(flag, dest=name, type=kind, action="append", default=[], metavar=metavar, help=help_text)
    return parser


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    values = {name: getattr(args, name) for _, name, _, _ in _SETTING_FLAGS}
    if args.deployment:
        values["deployments"] = tuple(args.deployment)
    for flag, name, count, _ in _DEPLOYMENT_FLAGS:
        pairs: list[tuple[str, tuple[int | None, ...]]] = getattr(args, name)
        names = [deployment for deployment, _ in pairs]
        repeated = sorted({d for d in names if names.count(d) > 1})
        if repeated:
            parser.error(f"argument {flag}: names {', '.join(repeated)} more than once")
        values[name] = {deployment: limits if count > 1 else limits[0] for deployment, limits in pairs}
    try:
        settings = EmulatorSettings(**values)
    except SettingsError as exc:
        # argparse's own format, naming the flags rather than the settings fields.
        flags = ", ".join(_FLAG_OF.get(name, name) for name in exc.fields)
        parser.error(f"argument {flags}: {exc.problem}")
    # SIGTERM takes the same clean path as Ctrl-C, so the socket is closed properly.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    with AzureOpenAIEmulator(settings, host=args.host, port=args.port, own_endpoints=args.own_endpoints) as emulator:
        print(emulator.endpoint, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0
