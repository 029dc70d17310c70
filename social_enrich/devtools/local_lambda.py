"""Run the Lambda handler in a child process, the way `sam local invoke` does, without AWS or Docker.

:class:`LocalLambdaClient` has the one method of boto3's Lambda client that ``PipesLambdaClient``
calls, ``invoke``: the payload goes to a fresh ``python -m social_enrich.devtools.local_lambda``,
whose stdout and stderr are the function's log (the last 4 KB come back as ``LogResult``, as from
Lambda), whose result is the response payload, and which is killed at the function's timeout.
The local environment's resources choose it (``local_lambda_resource.LocalLambdaResource``); elsewhere ``SOCIAL_ENRICH_LAMBDA_LOCAL=1``
does, for development and tests; moto's Lambda needs Docker.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

LOG_TAIL_BYTES = 4096  # what Lambda returns with LogType=Tail


class LocalContext:
    """The parts of Lambda's context object the handler reads."""

    def __init__(self, function_name: str, timeout_seconds: float) -> None:
        self.function_name = function_name
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class LocalLambdaClient:
    """``invoke`` runs the handler in a child process; the answer has the shape of boto3's."""

    def __init__(self, timeout_seconds: float = 900.0, env: dict[str, str] | None = None) -> None:
        self.timeout_seconds = timeout_seconds
        self.env = env

    def invoke(self, FunctionName: str, Payload: str | bytes = b"{}", InvocationType: str = "RequestResponse",
               LogType: str = "None") -> dict[str, Any]:
        if InvocationType != "RequestResponse":
            raise ValueError(f"LocalLambdaClient runs RequestResponse invocations only, not {InvocationType}")
        with tempfile.TemporaryDirectory(prefix="local-lambda-") as folder:
            event, result = Path(folder) / "event.json", Path(folder) / "result.json"
            event.write_bytes(Payload.encode() if isinstance(Payload, str) else Payload)
            command = [sys.executable, "-m", "social_enrich.devtools.local_lambda", "--function-name", FunctionName,
                       "--timeout-seconds", str(self.timeout_seconds), str(event), str(result)]
            try:
                # Lambda's timeout, plus a little for the interpreter to start.
                done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      env=self.env, timeout=self.timeout_seconds + 10)
                logs, error = done.stdout, None if done.returncode == 0 else "Unhandled"
                payload = result.read_bytes() if result.exists() else json.dumps(
                    {"errorType": "Runtime.ExitError", "errorMessage": f"exited with status {done.returncode}"}).encode()
            except subprocess.TimeoutExpired as e:
                logs, error = e.stdout or b"", "Unhandled"
                payload = json.dumps({"errorType": "Sandbox.Timedout",
                                      "errorMessage": f"Task timed out after {self.timeout_seconds:.2f} seconds"}).encode()
        response: dict[str, Any] = {"StatusCode": 200, "Payload": io.BytesIO(payload), "ExecutedVersion": "$LATEST"}
        if error:
            response["FunctionError"] = error
        if LogType == "Tail":
            response["LogResult"] = base64.b64encode(logs[-LOG_TAIL_BYTES:]).decode()
        return response


def main() -> None:
    parser = argparse.ArgumentParser(description="Run social_enrich.lambda_handler.handler on one event file.")
    parser.add_argument("--function-name", default="social-enrich")
    parser.add_argument("--timeout-seconds", type=float, default=900.0)
    parser.add_argument("event", type=Path)
    parser.add_argument("result", type=Path)
    args = parser.parse_args()
    context = LocalContext(args.function_name, args.timeout_seconds)  # the clock starts before the imports, as on Lambda
    # Lambda's runtime: a handler on the root logger, which stays at WARNING.
    logging.basicConfig(format="[%(levelname)s]\t%(asctime)s\t%(name)s\t%(message)s")
    from social_enrich.lambda_handler import handler

    try:
        answer, status = handler(json.loads(args.event.read_text()), context), 0
    except Exception as e:  # Lambda's error payload for an unhandled exception
        traceback.print_exc()
        answer = {"errorType": type(e).__name__, "errorMessage": str(e), "stackTrace": traceback.format_tb(e.__traceback__)}
        status = 1
    sys.stdout.flush()
    args.result.write_text(json.dumps(answer, default=str))
    sys.exit(status)


if __name__ == "__main__":
    main()
