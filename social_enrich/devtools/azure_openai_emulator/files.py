"""The Files API: an in-memory file store, multipart uploads, and the HTTP answers of ``/openai/files``.

Routes (``{prefix}`` is ``/openai`` with ``?api-version=...`` or ``/openai/v1``):

* ``POST {prefix}/files``: multipart form with ``purpose`` and ``file`` -> a file object;
* ``GET {prefix}/files`` (``purpose``, ``order``, ``after``, ``limit``) -> a list;
* ``GET {prefix}/files/{id}`` -> the file object; ``GET {prefix}/files/{id}/content`` -> its raw bytes;
* ``DELETE {prefix}/files/{id}`` -> ``{"id", "object": "file", "deleted": true}``.
"""

from __future__ import annotations

import email.parser
import email.policy
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .replies import Reply, error_reply
from .stats import Stats

# What an upload may declare; batch outputs get "batch_output" from the batch store.
UPLOAD_PURPOSES = ("batch", "fine-tune", "assistants", "vision", "user_data", "evals")
_MAX_LIST_LIMIT = 10_000


@dataclass(frozen=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclass(frozen=True)
class FileContent:
    """A raw (non-JSON) answer: the bytes of a stored file."""

    data: bytes
    content_type: str = "application/octet-stream"


class FileStore:
    """Uploaded files and batch outputs, by id, oldest first.  Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, StoredFile] = {}

    def add(self, data: bytes, filename: str, purpose: str) -> StoredFile:
        stored = StoredFile(f"file-{uuid.uuid4().hex}", filename, purpose, bytes(data), int(time.time()))
        with self._lock:
            self._files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        with self._lock:
            return self._files.get(file_id)

    def delete(self, file_id: str) -> bool:
        with self._lock:
            return self._files.pop(file_id, None) is not None

    def all(self) -> list[StoredFile]:
        with self._lock:
            return list(self._files.values())


class UploadError(ValueError):
    """A multipart upload the emulator cannot read."""


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a ``multipart/form-data`` body: name -> (filename or None, bytes), byte-exact."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        raise UploadError("The request must be multipart/form-data with a boundary.")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise UploadError("The multipart body could not be parsed.")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


def not_found(kind: str, object_id: str) -> Reply:
    return error_reply(404, "NotFound", f"{kind} with id '{object_id}' was not found.")


def bad_request(message: str, param: str | None = None) -> Reply:
    reply = error_reply(400, "invalid_request", message)
    reply.payload["error"]["param"] = param
    return reply


def list_page(items: list[dict[str, Any]], query: dict[str, str], default_limit: int, max_limit: int) -> Reply:
    """A cursor page of ``items`` (already in list order) after ``query["after"]``, at most ``limit`` long."""
    try:
        limit = int(query.get("limit", default_limit))
    except ValueError:
        return bad_request(f"Invalid limit {query.get('limit')!r}: expected an integer.", "limit")
    if not 1 <= limit <= max_limit:
        return bad_request(f"Invalid limit {limit}: expected 1 to {max_limit}.", "limit")
    after = query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return Reply(
        200,
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        },
    )


def files_api(
    store: FileStore, stats: Stats, method: str, file_id: str | None, action: str | None, query: dict[str, str],
    body: bytes, content_type: str,
) -> Reply | FileContent | None:  # fmt: skip
    """The answer to an authorised Files API call, or None when no such route exists (404)."""
    if file_id is None:
        if action is not None:
            return None
        if method == "POST":
            return _upload(store, stats, body, content_type)
        if method == "GET":
            return _list(store, query)
        return None
    stored = store.get(file_id)
    if method == "GET" and action == "content":
        return not_found("File", file_id) if stored is None else FileContent(stored.data)
    if action is not None:
        return None
    if method == "GET":
        return not_found("File", file_id) if stored is None else Reply(200, stored.to_json())
    if method == "DELETE":
        if not store.delete(file_id):
            return not_found("File", file_id)
        return Reply(200, {"id": file_id, "object": "file", "deleted": True})
    return None


def _upload(store: FileStore, stats: Stats, body: bytes, content_type: str) -> Reply:
    try:
        fields = parse_multipart(content_type, body)
    except UploadError as exc:
        return bad_request(str(exc))
    purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace").strip()
    if purpose not in UPLOAD_PURPOSES:
        return bad_request(f"Invalid purpose {purpose!r}: expected one of {', '.join(UPLOAD_PURPOSES)}.", "purpose")
    if "file" not in fields:
        return bad_request("The form field 'file' is required.", "file")
    filename, data = fields["file"]
    stored = store.add(data, filename or "upload", purpose)
    stats.record_file_upload()
    return Reply(200, stored.to_json())


def _list(store: FileStore, query: dict[str, str]) -> Reply:
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        return bad_request(f"Invalid order {order!r}: expected asc or desc.", "order")
    purpose = query.get("purpose")
    files = [f.to_json() for f in store.all() if purpose is None or f.purpose == purpose]
    if order == "desc":
        files.reverse()
    return list_page(files, query, _MAX_LIST_LIMIT, _MAX_LIST_LIMIT)
