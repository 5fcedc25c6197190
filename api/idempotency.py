"""Idempotency-Key on submissions: a retried POST gets the job the first one created.

Per tenant, a key is kept for VIGIL_IDEMPOTENCY_TTL seconds with the fingerprint of the request
that used it first (sha256 of method, path, query string and body bytes) and, once that request
was accepted, its 202 answer. Claiming a key is one ``SET NX`` of a "pending" record, so of
concurrent requests with one key exactly one creates a job; the others get 409 while it runs and
the stored answer after. The same key with another request is a 422.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import flask
import redis
from flask_smorest import abort

from core import keys
from core.config import Settings

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
KEY_RULE = "1-200 printable ASCII characters"
VALID_KEY = re.compile(r"[\x20-\x7e]{1,200}")
# A claim whose request died before it answered frees its key after this long.
PENDING_TTL_S = 60

HEADER_DOC = {
    "in": "header", "name": HEADER, "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"^[\x20-\x7e]+$"},
    "description": "Retrying with the same key and body returns the job the first request created "
                   f"(header `{REPLAYED}: true`) instead of creating another; keys are kept "
                   "VIGIL_IDEMPOTENCY_TTL seconds (default 24 h), per tenant.",
}

# Replace the record only if it is still our pending claim (it may have expired and been claimed
# again by a later request).
_FINISH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

Answer = tuple[dict[str, Any], int, dict[str, str]]


def fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, body):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def once(r: redis.Redis, settings: Settings, tenant: str, body: bytes,
         accept: Callable[[], Answer]) -> Answer:
    """``accept()``'s answer; with an Idempotency-Key, at most once per key (else the stored one).

    ``body`` is the raw request body (flask.request.get_data(cache=True)).
    """
    raw_key = flask.request.headers.get(HEADER)
    if raw_key is None:
        return accept()
    if not VALID_KEY.fullmatch(raw_key):
        abort(422, message=f"Invalid {HEADER}", errors={"headers": {HEADER: [
            f"{HEADER} must be {KEY_RULE}."]}})
    key = keys.idempotency(tenant, hashlib.sha256(raw_key.encode()).hexdigest())
    request = flask.request
    fp = fingerprint(request.method, request.path, request.query_string, body)
    claim = json.dumps({"state": "pending", "fingerprint": fp, "claim": uuid.uuid4().hex})
    for _ in range(3):
        if r.set(key, claim, nx=True, ex=PENDING_TTL_S):
            break
        record = r.get(key)
        if record is not None:
            return _answer_for(json.loads(record), fp)
        # Released or expired between SET NX and GET: try to claim it again.
    else:
        _in_progress()
    try:
        body_out, status, headers = accept()
    except BaseException:
        r.eval(_RELEASE, 1, key, claim)
        raise
    done = json.dumps({"state": "done", "fingerprint": fp, "status": status, "body": body_out,
                       "location": headers.get("Location")})
    r.eval(_FINISH, 1, key, claim, done, settings.idempotency_ttl_s)
    return body_out, status, headers


def _answer_for(record: dict[str, Any], fp: str) -> Answer:
    if record["fingerprint"] != fp:
        abort(422, message=f"This {HEADER} was already used with another request",
              errors={"headers": {HEADER: [
                  "The key was used with another request (method, path or body differ); "
                  "send a new key for a new submission."]}})
    if record["state"] != "done":
        _in_progress()
    headers = {REPLAYED: "true"}
    if record.get("location"):
        headers["Location"] = record["location"]
    return record["body"], record["status"], headers


def _in_progress():
    abort(409, message=f"A request with this {HEADER} is in progress; retry.",
          headers={"Retry-After": "1"})
