"""A small synchronous client for the Vigil HTTP API (httpx).

    from vigil_client import Client
    with Client() as vigil:                     # VIGIL_URL, VIGIL_API_KEY from the environment
        accepted = vigil.submit([{"event_type": "checkout", "timestamp": 1790000000,
                                  "payload": {"amount": 99.5}}])
        job = vigil.wait(accepted["job_id"])    # polls, honouring Retry-After
        print(job["summary"])

Every non-2xx answer raises VigilError with the problem document's title, detail and
per-field errors; a server that cannot be reached raises VigilError with status 0.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
# Polling: the server's Retry-After, else this; never longer than the cap nor shorter than the floor.
DEFAULT_POLL_S = 1.0
MAX_POLL_S = 5.0
MIN_POLL_S = 0.1
# Job ids per GET /v1/jobs?ids= (the server's limit).
MAX_IDS_PER_REQUEST = 100
# Per-field error lines shown in str(VigilError); the rest are counted.
MAX_ERROR_LINES = 10


def _sleep(seconds: float) -> None:
    """Indirection so tests can observe the waits without slowing down."""
    time.sleep(seconds)


def flatten_errors(errors: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """{"json": {"events": {"0": {"timestamp": ["Not…"]}}}} -> ("json.events.0.timestamp", "Not…")."""
    if isinstance(errors, dict):
        for key, value in errors.items():
            yield from flatten_errors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(errors, list) and all(isinstance(item, str) for item in errors):
        yield prefix, " ".join(errors)
    elif isinstance(errors, list):
        for i, item in enumerate(errors):
            yield from flatten_errors(item, f"{prefix}.{i}" if prefix else str(i))
    else:
        yield prefix, str(errors)


class VigilError(Exception):
    """A non-2xx answer (``status`` is its HTTP status), or no answer at all (``status`` 0).

    ``title``, ``detail`` and ``errors`` come from the problem+json body; ``errors`` maps
    locations to fields to messages, e.g. ``{"json": {"events": {"0": {"timestamp": [...]}}}}``.
    """

    def __init__(self, status: int, title: str, detail: str | None = None,
                 errors: dict | None = None):
        super().__init__(status, title, detail, errors)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors

    @classmethod
    def from_response(cls, response: httpx.Response) -> VigilError:
        title, detail, errors = response.reason_phrase or "Error", None, None
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            title = str(body.get("title") or title)
            detail = body.get("detail") or body.get("message")
            errors = body.get("errors") if isinstance(body.get("errors"), dict) else None
        elif response.text.strip():
            # Not Vigil's problem+json (a proxy in between?): show the start of what came back.
            detail = " ".join(response.text.split())[:300]
        return cls(response.status_code, title, detail, errors)

    @property
    def field_errors(self) -> list[tuple[str, str]]:
        return list(flatten_errors(self.errors or {}))

    def __str__(self) -> str:
        if self.status == 0:
            return self.detail or self.title
        head = f"{self.status} {self.title}"
        if self.detail and self.detail != self.title:
            head += f": {self.detail}"
        lines = [head]
        field_errors = self.field_errors
        lines += [f"  {path}: {message}" for path, message in field_errors[:MAX_ERROR_LINES]]
        if len(field_errors) > MAX_ERROR_LINES:
            lines.append(f"  … and {len(field_errors) - MAX_ERROR_LINES} more")
        if self.status == 401:
            lines.append("  Set the API key in VIGIL_API_KEY (or pass --key / api_key=).")
        return "\n".join(lines)


@dataclass
class EventsFile:
    """Events read from a file: CSV bytes as they are, or JSON already parsed."""

    csv: bytes | None = None
    events: list | None = None
    callback_url: str | None = None


def events_from_json(data: Any, name: str = "the JSON") -> tuple[list, str | None]:
    """A list of events, or an object with "events" (and maybe "callback_url")."""
    if isinstance(data, list):
        return data, None
    if isinstance(data, dict) and isinstance(data.get("events"), list):
        return data["events"], data.get("callback_url")
    raise ValueError(f'{name} must hold a list of events or an object with an "events" list')


def read_events(source: str | Path, stdin_text: str | None = None) -> EventsFile:
    """``.csv`` -> CSV bytes; ``.json`` (or ``-`` with ``stdin_text``) -> parsed events."""
    name = str(source)
    if name == "-" and stdin_text is not None:
        text = stdin_text
    else:
        path = Path(source)
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return EventsFile(csv=path.read_bytes())
        if suffix != ".json":
            raise ValueError(f"{name}: expected a .csv or .json file (or - for JSON on stdin)")
        text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{'stdin' if name == '-' else name} is not valid JSON: {exc}") from exc
    events, callback_url = events_from_json(data, "stdin" if name == "-" else name)
    return EventsFile(events=events, callback_url=callback_url)


def retry_after(value: str | None) -> float:
    """Seconds to wait per a Retry-After header (seconds or an HTTP date), within the bounds."""
    if not value:
        return DEFAULT_POLL_S
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return DEFAULT_POLL_S
    if not math.isfinite(seconds):
        return DEFAULT_POLL_S
    return min(max(seconds, MIN_POLL_S), MAX_POLL_S)


def _segment(value: str) -> str:
    return quote(str(value), safe="")


class Client:
    """The Vigil API. Use as a context manager, or call close() when done."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 30,
                 transport: httpx.BaseTransport | None = None):
        base_url = (base_url or os.environ.get("VIGIL_URL") or DEFAULT_URL).rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the Vigil URL must start with http:// or https://; got {base_url!r}")
        if api_key is None:
            api_key = os.environ.get("VIGIL_API_KEY") or None
        self.base_url = base_url
        self.timeout = timeout
        headers = {"Accept": "application/json", "User-Agent": "vigil-client/0.1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout,
                                  transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        """An absolute URL for a path the API returned, such as a job's status_url."""
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    # -- transport -------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise VigilError(0, "Connection failed", f"cannot reach Vigil at {self.base_url}: "
                             f"{exc or type(exc).__name__}; is it running (make run)?") from exc
        except httpx.TimeoutException as exc:
            raise VigilError(0, "Timeout", f"Vigil at {self.base_url} did not answer within "
                             f"{self.timeout}s ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise VigilError(0, "Connection failed", f"lost the connection to Vigil at "
                             f"{self.base_url}: {exc or type(exc).__name__}") from exc
        if not response.is_success:
            raise VigilError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._body(self._request(method, path, **kwargs))

    @staticmethod
    def _body(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise VigilError(response.status_code, "Unexpected response",
                             f"expected JSON, got {response.headers.get('content-type')!r}") from exc

    # -- events and jobs -------------------------------------------------------------------

    def validate(self, event: dict) -> dict:
        """Validate one event; returns the 202 body {job_id, status, status_url}."""
        return self._json("POST", "/v1/events/validate", json=event)

    def submit(self, events: list[dict] | None = None, *, csv: bytes | str | Path | None = None,
               callback_url: str | None = None) -> dict:
        """Validate a batch: a list of events (JSON), or CSV (bytes, text, or a file Path).

        CSV columns: event_type, timestamp, optional event_id, then payload fields.
        """
        if (events is None) == (csv is None):
            raise ValueError("pass either events or csv")
        if csv is not None:
            params = {"callback_url": callback_url} if callback_url else None
            return self._json("POST", "/v1/jobs", content=_csv_bytes(csv), params=params,
                              headers={"Content-Type": "text/csv; charset=utf-8"})
        body: dict[str, Any] = {"events": list(events)}
        if callback_url:
            body["callback_url"] = callback_url
        return self._json("POST", "/v1/jobs", json=body)

    def job(self, job_id: str) -> dict:
        """The job document; with results once it finished."""
        return self._json("GET", f"/v1/jobs/{_segment(job_id)}")

    def wait(self, job_id: str, *, timeout: float | None = None,
             on_progress: Callable[[dict], None] | None = None) -> dict:
        """Poll the job until it succeeded, failed or was cancelled; returns its document.

        Sleeps between polls as the server's Retry-After says (default 1 s, at most 5 s).
        ``on_progress`` gets every job document polled, the final one included, without its
        ``results`` (status, progress, summary, eta_s: a finished job of 1,000 events would
        be some 670 KB); the document returned has them. Raises TimeoutError if ``timeout``
        seconds pass first (the job keeps running).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        path = f"/v1/jobs/{_segment(job_id)}"
        while True:
            response = self._request("GET", path)
            job = self._body(response)
            if on_progress is not None:
                on_progress({k: v for k, v in job.items() if k != "results"})
            if job.get("status") in FINISHED:
                return job
            delay = retry_after(response.headers.get("Retry-After"))
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {job_id} did not finish within {timeout}s "
                                       f"(it is {job.get('status')}; it keeps running)")
                delay = min(delay, left)
            _sleep(delay)

    def results_csv(self, job_id: str) -> str:
        """The results as CSV text (409 unless the job succeeded)."""
        return self._request("GET", f"/v1/jobs/{_segment(job_id)}/results.csv",
                             headers={"Accept": "text/csv"}).text

    def cancel(self, job_id: str) -> dict:
        """Cancel an unfinished job (409 if it finished); returns its document."""
        return self._json("DELETE", f"/v1/jobs/{_segment(job_id)}")

    def jobs(self, limit: int | None = None, before: str | None = None) -> list[dict]:
        """The latest jobs, newest first, without their results: ``limit`` of them (the
        server's default 20, at most 200), those listed after job ``before`` if given (the
        next page: ``before=jobs[-1]["job_id"]``)."""
        params = {name: value for name, value in (("limit", limit), ("before", before))
                  if value is not None}
        return self._json("GET", "/v1/jobs", params=params)["jobs"]

    def jobs_by_ids(self, job_ids: Sequence[str]) -> list[dict]:
        """These jobs in this order, each with its results once finished, read 100 per
        request (GET /v1/jobs?ids=); unknown, expired or other tenants' ids are left out.
        Polls many single events' verdicts in a few requests."""
        found: list[dict] = []
        unique = list(dict.fromkeys(job_ids))
        for start in range(0, len(unique), MAX_IDS_PER_REQUEST):
            ids = ",".join(unique[start:start + MAX_IDS_PER_REQUEST])
            found += self._json("GET", "/v1/jobs", params={"ids": ids})["jobs"]
        return found

    # -- event types -----------------------------------------------------------------------

    def event_types(self) -> list[dict]:
        """[{event_type, events, model_version}]"""
        return self._json("GET", "/v1/event-types")["event_types"]

    def baseline(self, event_type: str) -> dict:
        """{event_type, min_history, fields: [{field, count, mean, std, checked}]}"""
        return self._json("GET", f"/v1/event-types/{_segment(event_type)}/baseline")

    def model(self, event_type: str) -> dict:
        """{version, trained_at, rows, features, contamination, threshold}"""
        return self._json("GET", f"/v1/event-types/{_segment(event_type)}/model")

    def train(self, event_type: str) -> dict:
        """Train the anomaly model now; returns the 202 body of the training job."""
        return self._json("POST", f"/v1/event-types/{_segment(event_type)}/model")

    def import_history(self, event_type: str, path_or_events: str | Path | list | dict) -> dict:
        """Import history: a .csv or .json file path, a list of events, or {"events": [...]}.

        CSV columns: timestamp plus payload fields. Events: {timestamp, payload}.
        Returns the 202 body of the import job.
        """
        path = f"/v1/event-types/{_segment(event_type)}/history"
        if isinstance(path_or_events, str | Path):
            loaded = read_events(path_or_events)
            if loaded.csv is not None:
                return self._json("POST", path, content=loaded.csv,
                                  headers={"Content-Type": "text/csv; charset=utf-8"})
            events = loaded.events
        else:
            events, _ = events_from_json(path_or_events, "path_or_events")
        return self._json("POST", path, json={"events": events})

    def episodes(self, event_type: str, open_only: bool = False) -> list[dict]:
        """The type's episodes, newest first: [{id, opened_at, last_flagged_at, closed_at,
        count, peak, rule}]; open_only: those still open."""
        params = {"open": "true"} if open_only else {}
        return self._json("GET", f"/v1/event-types/{_segment(event_type)}/episodes",
                          params=params)["episodes"]

    # -- the feedback loop ----------------------------------------------------------------

    def settings(self, event_type: str) -> dict:
        """{event_type, version, updated_at, settings, overrides, defaults, changes}"""
        return self._json("GET", f"/v1/event-types/{_segment(event_type)}/settings")

    def set_settings(self, event_type: str, overrides: dict, *,
                     if_version: int | None = None) -> dict:
        """Set the type's settings (all its overrides: one left out reverts to the
        environment's); if_version: refused (VigilError 412) if they changed since."""
        headers = {"If-Match": str(if_version)} if if_version is not None else {}
        return self._json("PUT", f"/v1/event-types/{_segment(event_type)}/settings",
                          json=overrides, headers=headers)

    def feedback(self, job_id: str, index: int, label: str | None,
                 note: str | None = None) -> dict:
        """Mark the verdict at ``index`` of a job: "false_alarm", "confirmed", or None to
        withdraw. Idempotent."""
        body: dict[str, Any] = {"label": label}
        if note:
            body["note"] = note
        return self._json("POST", f"/v1/jobs/{_segment(job_id)}/results/{int(index)}/feedback",
                          json=body)

    def feedback_summary(self, event_type: str) -> dict:
        """{event_type, false_alarm, confirmed, items, audit}"""
        return self._json("GET", f"/v1/event-types/{_segment(event_type)}/feedback")

    def backtest(self, event_type: str, settings: dict, *, since: Any = None,
                 until: Any = None, changed_limit: int | None = None) -> dict:
        """Start a backtest of proposed settings; returns the 202 body (wait() for the job:
        its summary holds current, proposed and changed_events)."""
        body: dict[str, Any] = {"settings": settings, **_range(since, until)}
        if changed_limit is not None:
            body["changed_limit"] = changed_limit
        return self._json("POST", f"/v1/event-types/{_segment(event_type)}/backtest", json=body)

    def revalidate(self, event_type: str, *, since: Any = None, until: Any = None,
                   changed_limit: int | None = None) -> dict:
        """Start a replay of the stored events in a range with today's baselines, model and
        settings; returns the 202 body (the job's summary: before, after, changed_events)."""
        body = _range(since, until)
        if changed_limit is not None:
            body["changed_limit"] = changed_limit
        return self._json("POST", f"/v1/event-types/{_segment(event_type)}/revalidate",
                          json=body)

    # -- webhook secret --------------------------------------------------------------------

    def rotate_webhook_secret(self) -> dict:
        """Create this tenant's webhook secret, or replace it; the answer holds the new secret
        (``secret``, shown this once) and, when one was replaced, ``previous_expires_at``: until
        then deliveries carry both signatures."""
        return self._json("POST", "/v1/webhooks/secret")

    def webhook_secret_info(self) -> dict:
        """{has_secret, created_at, previous_signing, previous_expires_at}: never the secret."""
        return self._json("GET", "/v1/webhooks/secret")

    def end_webhook_secret_overlap(self) -> None:
        """Stop signing with the replaced secret now, before its overlap ends."""
        self._request("DELETE", "/v1/webhooks/secret/previous")

    # -- episode webhooks ------------------------------------------------------------------

    def set_episode_webhook(self, url: str) -> dict:
        """Send this tenant's episode.opened / episode.closed webhooks to ``url`` (signed with
        its webhook secret, which must exist first)."""
        return self._json("PUT", "/v1/webhooks/episodes", json={"url": url})

    def episode_webhook(self) -> dict:
        """{url, created_at, events}; VigilError 404 when none is registered."""
        return self._json("GET", "/v1/webhooks/episodes")

    def delete_episode_webhook(self) -> None:
        self._request("DELETE", "/v1/webhooks/episodes")


def _range(since: Any, until: Any) -> dict[str, Any]:
    """A time range's body fields (epoch seconds or ISO-8601), leaving out open ends."""
    return {name: value for name, value in (("since", since), ("until", until))
            if value is not None}


def _csv_bytes(csv: bytes | str | Path) -> bytes:
    if isinstance(csv, Path):
        return csv.read_bytes()
    if isinstance(csv, str):
        return csv.encode("utf-8")
    return bytes(csv)
