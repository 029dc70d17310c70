"""Azure OpenAI Global Batch: JSONL request files out, answers back by ``custom_id``.

Requests are the same packed chat requests the realtime path sends (``packing``), so a batch answer
is validated and matched exactly like a realtime one. Files are split at Azure's limits (requests
and bytes per file); one deployment per file, spread over the provider's Global Batch deployments
within each one's enqueued-token quota (see ``batch_enrichment.send_unsent``). Output order is not guaranteed, so everything is
joined on ``custom_id``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai
from pydantic import BaseModel

from social_enrich.config import InferenceConfig
from social_enrich.inference.azure_deployment import DEFAULT_ENQUEUED_TOKEN_LIMIT
from social_enrich.inference.azure_openai import ANSWER_OVERHEAD_TOKENS, FILTERED_PROMPT, AzureOpenAIProvider, read_completion
from social_enrich.inference.packing import build_messages, response_format
from social_enrich.inference.provider import PostToScore, ScoreResult
from social_enrich.inference.token_budget import estimate_request_tokens
from social_enrich.inference.usage import Usage

COMPLETION_WINDOW = "24h"
LIST_PAGE = 100  # batches per page of a listing, the API's maximum


@dataclass(frozen=True)
class RequestFile:
    """One JSONL input file: its bytes and the custom_ids it carries, in order."""

    content: bytes
    custom_ids: list[str]


def request_line(custom_id: str, deployment: str, inference: InferenceConfig, response_model: type[BaseModel],
                 posts: Sequence[PostToScore]) -> bytes:
    body = {
        "model": deployment,
        "messages": build_messages(inference.prompt, list(posts)),
        "response_format": response_format(response_model),
        "max_tokens": ANSWER_OVERHEAD_TOKENS + len(posts) * inference.max_output_tokens_per_post,
    }
    line = {"custom_id": custom_id, "method": "POST", "url": "/chat/completions", "body": body}
    return json.dumps(line, ensure_ascii=False, default=str, separators=(",", ":")).encode() + b"\n"


def request_files(lines: Sequence[tuple[str, bytes]], max_requests: int, max_bytes: int) -> Iterator[RequestFile]:
    """Group (custom_id, line) into files of at most ``max_requests`` lines and ``max_bytes`` bytes."""
    ids: list[str] = []
    parts: list[bytes] = []
    size = 0
    for custom_id, line in lines:
        if len(line) > max_bytes:
            raise ValueError(f"request {custom_id} alone is {len(line)} bytes, over the file limit of {max_bytes}")
        if parts and (len(parts) >= max_requests or size + len(line) > max_bytes):
            yield RequestFile(b"".join(parts), ids)
            ids, parts, size = [], [], 0
        ids.append(custom_id)
        parts.append(line)
        size += len(line)
    if parts:
        yield RequestFile(b"".join(parts), ids)


def new_custom_id() -> str:
    return f"req-{uuid.uuid4().hex}"


@dataclass
class BatchAnswers:
    """What a finished batch's files say, per custom_id."""

    answered: dict[str, list[ScoreResult | None]] = field(default_factory=dict)  # None: ask again (item missing or invalid)
    errors: dict[str, str] = field(default_factory=dict)  # the whole request failed: ask again
    usage: Usage = field(default_factory=Usage)


def read_output_line(line: dict[str, Any], sizes: dict[str, int], response_model: type[BaseModel], into: BatchAnswers) -> None:
    custom_id = line.get("custom_id")
    if custom_id not in sizes:
        return  # not a request of ours (or already settled): ignored
    response = line.get("response") or {}
    error = line.get("error")
    status = response.get("status_code")
    body = response.get("body") or {}
    if error or status != 200:
        code = (error or body.get("error") or {}).get("code")
        if status == 400 and code == "content_filter":
            into.answered[custom_id] = [ScoreResult("filtered", None, FILTERED_PROMPT)] * sizes[custom_id]
            return
        message = (error or body.get("error") or {}).get("message", "")
        into.errors[custom_id] = f"{code or 'HTTP ' + str(status)}: {message}"[:500]
        return
    answer = read_completion(body, sizes[custom_id], response_model)
    into.usage += answer.usage
    into.usage.requests += 1
    if answer.kind == "filtered":
        into.answered[custom_id] = [ScoreResult("filtered", None, answer.reason)] * sizes[custom_id]
    elif answer.kind != "answered":  # refused or unreadable: its posts are asked again
        into.errors[custom_id] = answer.reason or answer.kind
    else:
        into.answered[custom_id] = [
            ScoreResult("ok", answer.matched.answers[n]) if n in answer.matched.answers else None for n in range(sizes[custom_id])
        ]


def parse_jsonl(content: bytes) -> Iterator[dict[str, Any]]:
    for raw in content.splitlines():
        if raw.strip():
            try:
                yield json.loads(raw)
            except ValueError:
                continue  # a torn line is treated like a missing answer: its posts are asked again


@dataclass(frozen=True)
class BatchLane:
    """A Global Batch deployment: its name, its resource's SDK client, and its enqueued-token quota."""

    deployment: str
    client: openai.AzureOpenAI
    enqueued_token_limit: int = DEFAULT_ENQUEUED_TOKEN_LIMIT


def request_tokens(line: bytes) -> int:
    """What Azure counts of a request line against the enqueued-token quota: its prompt and max_tokens."""
    body = json.loads(line)["body"]
    return estimate_request_tokens(body["messages"], body.get("response_format"), body.get("max_tokens") or 0)


class AzureBatchClient:
    """Upload, create, retrieve, cancel and download, through the openai SDK's Azure client, for the
    provider's Global Batch deployments (one, or several of a pool: ``lanes``, the first ``client``);
    answers are cached under the provider's cache identity, as realtime ones."""

    def __init__(self, client: openai.AzureOpenAI, model_id: str, deployment: str | None = None,
                 cache_identity: str | None = None, enqueued_token_limit: int = DEFAULT_ENQUEUED_TOKEN_LIMIT,
                 others: Sequence[BatchLane] = ()) -> None:
        self.lanes = [BatchLane(deployment or model_id, client, enqueued_token_limit), *others]
        self.model_id, self.cache_identity = model_id, cache_identity or model_id

    @property
    def client(self) -> openai.AzureOpenAI:
        return self.lanes[0].client

    @property
    def deployment(self) -> str:
        return self.lanes[0].deployment

    @classmethod
    def for_provider(cls, provider: AzureOpenAIProvider) -> AzureBatchClient:
        first, *others = [BatchLane(d.name, d.batch_client(), d.enqueued_token_limit) for d in provider.batch_deployments()]
        return cls(first.client, provider.model_id, first.deployment, provider.cache_identity, first.enqueued_token_limit, others)

    def _lane(self, deployment: str | None) -> BatchLane:
        """The lane of a recorded batch (None: recorded before pools, on the first)."""
        for lane in self.lanes:
            if lane.deployment == deployment:
                return lane
        if deployment is None:
            return self.lanes[0]
        raise KeyError(f"batch deployment {deployment} is not among the provider's Global Batch deployments "
                       f"({', '.join(lane.deployment for lane in self.lanes)}): keep it in the pool until its batches are done")

    def room(self, enqueued: dict[str | None, int]) -> dict[str, int]:
        """Tokens each deployment's enqueued-token quota has left, given what is enqueued (None: the first's)."""
        first = self.lanes[0].deployment
        used = {lane.deployment: enqueued.get(lane.deployment, 0) + (enqueued.get(None, 0) if lane.deployment == first else 0)
                for lane in self.lanes}
        return {lane.deployment: lane.enqueued_token_limit - used[lane.deployment] for lane in self.lanes}

    def submit(self, request_file: RequestFile, metadata: dict[str, str] | None = None,
               deployment: str | None = None) -> tuple[str, str, str]:
        """(batch id, status, input file id) of a new batch for the file, tagged with ``metadata``."""
        client = self._lane(deployment).client
        uploaded = client.files.create(file=("requests.jsonl", request_file.content), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/chat/completions", completion_window=COMPLETION_WINDOW,
            **({"metadata": metadata} if metadata else {}),
        )
        return batch.id, batch.status, uploaded.id

    def find(self, key: str, value: str, created_since: float) -> tuple[str, str, str, str] | None:
        """(batch id, status, input file id, deployment) of the batch whose ``metadata[key]`` is ``value``,
        among those created since ``created_since`` (epoch seconds) on any lane, or None. Each list is
        newest first, so the walk stops at the first older batch: it never reads an account's whole history."""
        for lane in self.lanes:
            for batch in lane.client.batches.list(limit=LIST_PAGE):
                if batch.created_at < created_since:
                    break
                if (batch.metadata or {}).get(key) == value:
                    return batch.id, batch.status, batch.input_file_id, lane.deployment
        return None

    def retrieve(self, batch_id: str, deployment: str | None = None) -> Any:
        return self._lane(deployment).client.batches.retrieve(batch_id)

    def cancel(self, batch_id: str, deployment: str | None = None) -> None:
        self._lane(deployment).client.batches.cancel(batch_id)

    def download(self, file_id: str | None, deployment: str | None = None) -> bytes:
        return self._lane(deployment).client.files.content(file_id).content if file_id else b""
