"""/ui: a web page over the store for people: volumes, field histories against their band,
flagged events and the latest jobs. Plots are drawn here with matplotlib; nothing external.

Browsers cannot send a Bearer header, so /ui/login turns an API key into a signed session
cookie (path /ui, HttpOnly, SameSite=Lax) holding the tenant and a tag of the key it was made
from: removing that key from VIGIL_API_KEYS ends the session. A valid Bearer header works too.
The login and logout forms carry a CSRF token kept in the session; logout is POST only.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import secrets
import threading
from collections import Counter, OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

import flask
import redis
from flask import Blueprint
from flask.sessions import SecureCookieSessionInterface
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from api.auth import tenant_for
from api.jobs import accept, job_answer, results_csv_response
from api.services import services
from core import keys, metrics
from core.config import ConfigError, key_digest
from core.quantiles import histogram_buckets, quantile
from tasks import episodes, feedback, type_settings
from tasks.models import z_thresholds
from tasks.store import baselines, jobs, model_blobs

log = logging.getLogger(__name__)

blp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates")

MAX_TYPES = 10          # sections shown at once: the most active types
MAX_LISTED_TYPES = 500  # types offered in the selector
MAX_FIELDS = 6          # plots per type
MAX_JOBS = 20
MAX_KEY_CHARS = 1000
MAX_FLAGGED_LISTED = 20
MAX_EPISODES_LISTED = 5
# A plot shows the latest this many accepted events by default (two months squeezed into
# one plot read as a bar); span=all shows every kept one.
PLOT_POINTS = 500
# What the /ui backtest form may propose (the CLI and the API take every per-type setting).
BACKTEST_SETTINGS = {"z_threshold": float, "alert_rate": float, "min_history": int}
FEEDBACK_CHOICES = {"false_alarm": "false_alarm", "confirmed": "confirmed", "withdraw": None}
SESSION_LIFETIME = timedelta(hours=12)
# Distinctive plot colours (the browser test counts pixels near BAND and FLAGGED).
BAND = "#9fd3f5"
MEAN = "#2a7ab8"
LINE = "#1f2d3d"
FLAGGED = "#e3001b"
PNG_HEADERS = {"Content-Type": "image/png"}
PLOT_CACHE_SIZE = 128   # rendered PNGs kept per process (~30 kB each)
# No script at all, styles inline, images and forms from here only.
CSP = ("default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


# --- configuration and auth -----------------------------------------------------------------

def secret_key(r: redis.Redis, environ=os.environ) -> str:
    """VIGIL_SECRET_KEY, else a random key generated once and kept in Redis: the first API
    process to ask stores it (SET NX), every other process and restart reads that one. Never
    derived from a webhook secret: whoever can verify webhooks must not be able to sign a
    session. Production may run without VIGIL_SECRET_KEY too; then Redis holds the key."""
    explicit = (environ.get("VIGIL_SECRET_KEY") or "").strip()
    if explicit:
        return explicit
    while True:  # loops only if the key is deleted between the two calls
        if r.set(keys.ui_session_key(), secrets.token_hex(32), nx=True):
            log.info("generated the /ui session key (VIGIL_SECRET_KEY is not set)")
        stored = r.get(keys.ui_session_key())
        if stored:
            return stored.decode()


@blp.record_once
def _configure(state) -> None:
    app = state.app
    if not app.secret_key and (os.environ.get("VIGIL_SECRET_KEY") or "").strip():
        app.secret_key = secret_key(app.extensions["vigil"].redis)
    # Else the first /ui request reads it from Redis (_Sessions): starting the API never
    # waits for Redis, and /ui answers 503 while Redis is unreachable, as /v1 does.
    app.session_interface = _Sessions()
    app.config.update(
        SESSION_COOKIE_NAME="vigil_ui",
        SESSION_COOKIE_PATH="/ui",  # the API under /v1 never sees the cookie
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )


class _Sessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, their key (secret_key()) read from Redis by the first
    /ui request rather than at start. Other paths never open a session."""

    def open_session(self, app: flask.Flask, request: flask.Request):
        if not app.secret_key and request.path.startswith(blp.url_prefix):
            try:
                app.secret_key = secret_key(app.extensions["vigil"].redis)
            except redis.RedisError:
                log.warning("the /ui session key could not be read from Redis", exc_info=True)
                return None  # a null session; _require_session_key answers 503
        return super().open_session(app, request)


@blp.before_request
def _require_session_key() -> None:
    if not flask.current_app.secret_key:
        # Redis was unreachable as the session opened: answered as any outage (503, Retry-After).
        raise redis.ConnectionError("the /ui session key could not be read from Redis")


def csrf_token() -> str:
    """The session's CSRF token, made on first use. The login and logout forms carry it; a
    form posted from another site cannot, since it can neither read this page nor the cookie."""
    token = flask.session.get("csrf")
    if not isinstance(token, str):
        token = flask.session["csrf"] = secrets.token_urlsafe(32)
    return token


def _csrf_ok() -> bool:
    sent, expected = flask.request.form.get("csrf_token", ""), flask.session.get("csrf")
    return isinstance(expected, str) and hmac.compare_digest(sent.encode(), expected.encode())


def _key_tag(digest: str) -> str:
    """Names the API key a session came from without revealing it (or its digest)."""
    secret = str(flask.current_app.secret_key).encode()
    return hmac.new(secret, b"ui-key:" + digest.encode(), hashlib.sha256).hexdigest()[:32]


def current_tenant() -> str | None:
    """The tenant of a valid Bearer header, else of a valid session whose key still exists."""
    api_keys = dict(services().settings.api_keys)
    tenant = tenant_for(flask.request.headers.get("Authorization"), api_keys)
    if tenant is not None:
        return tenant
    tenant, tag = flask.session.get("tenant"), flask.session.get("key")
    if not isinstance(tenant, str) or not isinstance(tag, str):
        return None
    for digest, known in api_keys.items():
        if known == tenant and hmac.compare_digest(_key_tag(digest), tag):
            return tenant
    return None


def _require_tenant() -> str:
    tenant = current_tenant()
    if tenant is None:
        flask.abort(401)
    flask.g.tenant = tenant
    return tenant


@blp.after_request
def _headers(response: flask.Response) -> flask.Response:
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", CSP)
    return response


def _login_page(error: str | None = None, status: int = 200):
    headers = {"WWW-Authenticate": 'Bearer realm="vigil"'} if status == 401 else {}
    return (flask.render_template("ui.html", login=True, error=error, csrf=csrf_token()),
            status, headers)


@blp.post("/login")
def login():
    if not _csrf_ok():  # a login form posted from another site, or a page from before a restart
        return _login_page("This sign-in form expired or did not come from this page; "
                           "sign in again below.", 400)
    key = flask.request.form.get("api_key", "").strip()
    api_keys = dict(services().settings.api_keys)
    tenant = tenant_for(f"Bearer {key}", api_keys) if 0 < len(key) <= MAX_KEY_CHARS else None
    if tenant is None:
        return _login_page("That API key is not valid.", 401)
    flask.session.clear()
    flask.session.permanent = True
    # A fresh CSRF token too: the signed-in session shares nothing with the one before.
    flask.session.update(tenant=tenant, key=_key_tag(key_digest(key)),
                         csrf=secrets.token_urlsafe(32))
    return flask.redirect(flask.url_for("ui.index"), 303)


@blp.post("/logout")  # POST only: a link or an image on another site cannot sign anyone out
def logout():
    if not _csrf_ok():
        flask.abort(400, description="The sign-out form did not come from this page (its CSRF "
                                     "token is missing or wrong); reload /ui and sign out there.")
    flask.session.clear()
    return flask.redirect(flask.url_for("ui.index"), 303)


# --- the page --------------------------------------------------------------------------------

def human_time(epoch: float | None) -> str | None:
    """A moment as people read it: "2026-12-02 01:20:03 UTC"."""
    if epoch is None:
        return None
    try:
        return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _values_text(values: dict) -> str:
    return ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items())


def _flagged_list(rows: list[dict], labels: dict[str, dict]) -> list[dict]:
    """The latest flagged events, newest first, with what raised them and their feedback."""
    listed = []
    for row in reversed(rows[-MAX_FLAGGED_LISTED:]):
        member = f"{row.get('job')}:{row.get('i')}"
        listed.append({"when": human_time(row.get("ts")), "values": _values_text(row.get("v", {})),
                       "codes": ", ".join(row.get("codes", ())),
                       "fields": ", ".join(row.get("fields", ())),
                       "job": row.get("job"), "index": row.get("i"),
                       "label": labels.get(member, {}).get("label")})
    return listed


def _peak_text(peak: dict | None) -> str:
    """An episode's peak in brief: its field's value, or a model-only peak's score."""
    if not peak:
        return ""
    if peak.get("field"):
        return _values_text({peak["field"]: peak.get("value")})
    return _values_text({"score": peak.get("score")})


def _episode_rows(r, tenant: str, event_type: str) -> list[dict]:
    return [{"id": e["id"], "opened": human_time(e["opened_at"]),
             "closed": human_time(e["closed_at"]), "count": e["count"], "rule": e["rule"],
             "peak": _peak_text(e.get("peak"))}
            for e in episodes.list_episodes(r, tenant, event_type)[:MAX_EPISODES_LISTED]]


def _backtest_view(job: dict | None) -> dict | None:
    """The type's latest backtest job as the page shows it: status, the two sides' figures."""
    if job is None:
        return None
    view = {"id": job["job_id"], "status": job["status"], "error": job.get("error"),
            "proposed": _values_text(((job.get("params") or {}).get("settings")) or {}),
            "rows": []}
    summary = job.get("summary") if job["status"] == jobs.SUCCEEDED else None
    if summary:
        current, proposed = summary["current"], summary["proposed"]
        view["rows"] = [
            (label, show(current), show(proposed)) for label, show in (
                ("events", lambda x: x["events"]), ("flagged", lambda x: x["flagged"]),
                ("per 1,000", lambda x: f"{1000 * (x['alert_rate'] or 0):.2f}"),
                ("by rule", lambda x: _values_text(x["by_rule"]) or "-"),
                ("episodes", lambda x: x["episodes"]),
                ("false alarms flagged", lambda x: f"{x['false_alarms_flagged']} of "
                                                   f"{x['false_alarms_marked']}"),
                ("confirmed flagged", lambda x: f"{x['confirmed_flagged']} of "
                                                f"{x['confirmed_marked']}"))]
        view["changed"] = summary["changed"]
    return view


def _type_section(r, tenant: str, event_type: str, accepted: int, invalid: int,
                  jobs: list[dict] = ()) -> dict:
    baseline = baselines.load_baseline(r, tenant, event_type)
    flagged = baselines.flagged_rows(r, tenant, event_type)
    names = sorted(baseline, key=lambda f: (-baseline[f].n, f))[:MAX_FIELDS]
    # The thresholds the z-rule uses now: calibrated per field, or VIGIL_Z_THRESHOLD.
    typed, _ = type_settings.effective(r, services().settings, tenant, event_type)
    limits = z_thresholds(typed, model_blobs.model_meta(r, tenant, event_type), names)
    fields = []
    for name in names:
        m, z = baseline[name], limits[name]["threshold"]
        fields.append({
            "name": name, "n": m.n, "mean": m.mean, "std": m.std, "z": z,
            "z_source": limits[name]["source"],
            "low": m.mean - z * m.std, "high": m.mean + z * m.std,
            "flagged": sum(1 for row in flagged if name in row.get("v", {})),
            "plot_url": flask.url_for("ui.plot", event_type=event_type, field=name)})
    total = accepted + invalid
    codes = Counter(code for row in flagged for code in row.get("codes", ()))
    return {"name": event_type, "accepted": accepted, "invalid": invalid, "total": total,
            "valid_pct": 100.0 * accepted / total if total else 0.0,
            "invalid_pct": 100.0 * invalid / total if total else 0.0,
            "fields": fields, "more_fields": max(0, len(baseline) - MAX_FIELDS),
            "flagged_kept": len(flagged), "codes": sorted(codes.items()),
            "model_version": model_blobs.model_version(r, tenant, event_type),
            "flagged_list": _flagged_list(flagged, feedback.labels(r, tenant, event_type)),
            "episodes": _episode_rows(r, tenant, event_type),
            "backtest": _backtest_view(next((j for j in jobs if j.get("kind") == "backtest"
                                             and j.get("event_type") == event_type), None)),
            "backtest_settings": list(BACKTEST_SETTINGS)}


def _job_row(job: dict) -> dict:
    summary = job.get("summary") if isinstance(job.get("summary"), dict) else {}
    job_id = job["job_id"]
    return {"id": job_id, "kind": job.get("kind"), "status": job.get("status"),
            "event_type": job.get("event_type"), "created_at": human_time(job.get("created_at")),
            "events": summary.get("events", job.get("total")), "valid": summary.get("valid"),
            "invalid": summary.get("invalid"), "error": job.get("error"),
            "json_url": flask.url_for("ui.job", job_id=job_id),
            "csv_url": flask.url_for("ui.results_csv", job_id=job_id)
            if job.get("status") == jobs.SUCCEEDED and job.get("kind") == "validate" else None}


@blp.get("/")
@blp.get("")  # registered first: url_for gives /ui
def index():
    tenant = current_tenant()
    if tenant is None:
        return _login_page()
    r = services().redis
    accepted, invalid = baselines.event_type_counts(r, tenant), baselines.invalid_counts(r, tenant)
    activity = {t: accepted.get(t, 0) + invalid.get(t, 0) for t in {*accepted, *invalid}}
    ranked = sorted(activity, key=lambda t: (-activity[t], t))
    chosen = flask.request.args.get("type", "")
    shown = [chosen] if chosen in activity else ranked[:MAX_TYPES]
    chosen = chosen if chosen in activity else ""
    # With a type chosen, its jobs among every listed one; else the latest of all types.
    listed = jobs.recent_job_ids(r, tenant, jobs.RECENT_JOBS_KEPT if chosen else MAX_JOBS)
    found = [job for job in jobs.get_jobs(r, tenant, listed or []) if job]
    if chosen:
        found = [job for job in found if job.get("event_type") == chosen][:MAX_JOBS]
    sections = [_type_section(r, tenant, t, accepted.get(t, 0), invalid.get(t, 0), found)
                for t in shown]
    session_login = not flask.request.headers.get("Authorization")
    return flask.render_template(
        "ui.html", login=False, tenant=tenant, sections=sections, chosen=chosen,
        choices=ranked[:MAX_LISTED_TYPES], type_count=len(ranked),
        max_types=MAX_TYPES,
        jobs=[_job_row(job) for job in found], band=BAND, flagged_colour=FLAGGED,
        verdict_times=verdict_times(),
        session_login=session_login, csrf=csrf_token(),
        notice=flask.request.args.get("notice", "")[:300], plot_points=PLOT_POINTS)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def verdict_times() -> list[dict]:
    """p50 and p99 of the time to verdict per kind, from the histogram /metrics exports (every
    process's, in multiprocess mode): the same figures a Grafana panel computes."""
    by_kind = histogram_buckets(metrics.process_metrics(), "vigil_time_to_verdict_seconds", "kind")
    rows = []
    for kind in metrics.VERDICT_KINDS:
        buckets = by_kind.get(kind, [])
        rows.append({"kind": kind, "count": f"{int(buckets[-1][1]) if buckets else 0:,}",
                     "p50": _duration(quantile(0.5, buckets)),
                     "p99": _duration(quantile(0.99, buckets))})
    return rows


# --- plots -------------------------------------------------------------------------------------

def _when(ts: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(ts), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _points(rows: list[dict], field: str) -> tuple[list[datetime], list[float]]:
    points = []
    for row in rows:
        value = row.get("v", {}).get(field)
        when = _when(row.get("ts"))
        if when is not None and isinstance(value, int | float) and value == value:
            points.append((when, float(value)))
    points.sort(key=lambda p: p[0])
    return [p[0] for p in points], [p[1] for p in points]


def render_plot(history: list[dict], flagged: list[dict], field: str, mean: float | None,
                std: float | None, z: float) -> bytes:
    """PNG: the field's accepted history over time, mean +/- z*std as a filled band, and the
    latest flagged events as red points. Field names never reach matplotlib's text engine."""
    fig = Figure(figsize=(7.6, 2.8), dpi=100)
    FigureCanvasAgg(fig)
    # Fixed margins: twice as fast as a constrained layout, and the legend sits above the axes.
    fig.subplots_adjust(left=0.085, right=0.985, top=0.87, bottom=0.18)
    ax = fig.add_subplot()
    xs, ys = _points(history, field)
    fx, fy = _points(flagged, field)
    if mean is not None and std is not None:
        ax.axhspan(mean - z * std, mean + z * std, facecolor=BAND, edgecolor="none", zorder=0,
                   label=f"mean ± {z:g}σ")
        ax.axhline(mean, color=MEAN, linewidth=1, linestyle="--", zorder=1, label="mean")
    if xs:
        ax.plot(xs, ys, color=LINE, linewidth=0.8, zorder=2, label="accepted")
    if fx:
        ax.scatter(fx, fy, s=30, color=FLAGGED, edgecolors=FLAGGED, zorder=3, label="flagged")
    if xs or fx:
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        # Above the axes, so the legend never hides a point.
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), fontsize=8, frameon=False, ncols=4,
                  borderaxespad=0)
    else:
        ax.text(0.5, 0.5, "no history yet", ha="center", va="center", transform=ax.transAxes,
                color="#666666")
    # Plain short numbers: an offset text ("1e6") would sit under the legend.
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:.5g}"))
    ax.grid(True, color="#e6e6e6", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def plotted(history: list[dict], flagged: list[dict], field: str,
            whole: bool) -> tuple[list[dict], list[dict]]:
    """What a field's plot shows: the latest PLOT_POINTS accepted events (every one kept if
    ``whole``) and the flagged events in that span that this field raised (rows from before
    flagged rows named their fields: every flagged event that has the field)."""
    if not whole and len(history) > PLOT_POINTS:
        history = sorted(history, key=lambda row: row.get("ts", 0))[-PLOT_POINTS:]
        start = history[0].get("ts", 0)
        flagged = [row for row in flagged if row.get("ts", 0) >= start]
    return history, [row for row in flagged if field in row.get("fields", row.get("v", {}))]


_plots: OrderedDict[tuple, bytes] = OrderedDict()
# matplotlib makes no promise about threads; one render at a time per process.
_render_lock = threading.Lock()


@blp.get("/plot.png")
def plot():
    tenant = _require_tenant()
    event_type = flask.request.args.get("event_type", "")
    field = flask.request.args.get("field", "")
    if not event_type or not field:
        flask.abort(404)
    svc = services()
    r = svc.redis
    typed, _ = type_settings.effective(r, svc.settings, tenant, event_type)
    z = z_thresholds(typed, model_blobs.model_meta(r, tenant, event_type), [field])[field]["threshold"]
    whole = flask.request.args.get("span") == "all"
    # Every change to a type's history or flagged list bumps one of these counters, so they
    # version the plot; read before the data, a concurrent batch only costs a re-render.
    version = (baselines.event_type_counts(r, tenant).get(event_type, 0),
               baselines.invalid_counts(r, tenant).get(event_type, 0))
    key = (tenant, event_type, field, z, version, whole)
    with _render_lock:
        png = _plots.get(key)
        if png is not None:
            _plots.move_to_end(key)
            return flask.Response(png, headers=PNG_HEADERS)
    moments = baselines.load_baseline(r, tenant, event_type, [field]).get(field)
    flagged = baselines.flagged_rows(r, tenant, event_type)
    if moments is None and not any(field in row.get("v", {}) for row in flagged):
        flask.abort(404)
    history, flagged = plotted(baselines.history_rows(r, tenant, event_type), flagged, field, whole)
    with _render_lock:
        png = render_plot(history, flagged, field, moments.mean if moments else None,
                          moments.std if moments else None, z)
        _plots[key] = png
        while len(_plots) > PLOT_CACHE_SIZE:
            _plots.popitem(last=False)
    return flask.Response(png, headers=PNG_HEADERS)


# --- the feedback loop: feedback buttons and the backtest form -------------------------------

def _back_to(event_type: str, notice: str = "", anchor: str = "") -> flask.Response:
    args = {"type": event_type, **({"notice": notice} if notice else {})}
    return flask.redirect(flask.url_for("ui.index", **args) + anchor, 303)


def _form_tenant() -> str:
    """The signed-in tenant of a /ui form, its CSRF token checked (400 otherwise)."""
    tenant = _require_tenant()
    if not _csrf_ok():
        flask.abort(400, description="This form did not come from this page (its CSRF token is "
                                     "missing or wrong); reload /ui and try again.")
    return tenant


def _actor() -> str:
    return "ui:" + str(flask.session.get("key", "bearer"))[:12]


@blp.post("/feedback")
def give_feedback():
    tenant = _form_tenant()
    form = flask.request.form
    event_type, job_id = form.get("event_type", ""), form.get("job", "")
    choice = form.get("label", "")
    if choice not in FEEDBACK_CHOICES or not form.get("index", "").isdigit():
        flask.abort(400, description="Choose false alarm, confirmed or withdraw for an event.")
    svc = services()
    try:
        event = feedback.judged_event(svc.redis, tenant, job_id, int(form["index"]))
    except feedback.FeedbackRefused as exc:
        return _back_to(event_type, str(exc), "#flagged")
    feedback.give(svc.redis, svc.settings.history_max_rows, tenant, event,
                  FEEDBACK_CHOICES[choice], form.get("note", "")[:1000] or None, _actor())
    return _back_to(event.event_type, "", "#flagged")


@blp.post("/backtest")
def start_backtest():
    tenant = _form_tenant()
    form = flask.request.form
    event_type, name = form.get("event_type", ""), form.get("setting", "")
    svc = services()
    if name not in BACKTEST_SETTINGS:
        return _back_to(event_type, f"Choose one of {', '.join(BACKTEST_SETTINGS)}.", "#backtest")
    current = type_settings.load(svc.redis, tenant, event_type).overrides
    try:
        proposed = {**current, name: BACKTEST_SETTINGS[name](form.get("value", "").strip())}
        svc.settings.for_type(proposed)
    except ConfigError as exc:
        return _back_to(event_type, f"{name}: {exc}", "#backtest")
    except ValueError:
        return _back_to(event_type, f"{name} takes a number.", "#backtest")
    if baselines.history_count(svc.redis, tenant, event_type) < 2:
        return _back_to(event_type, f"{event_type!r} has no history to backtest on yet.",
                        "#backtest")
    flask.g.tenant = tenant
    accept("backtest", [], event_type=event_type, params={"settings": proposed})
    return _back_to(event_type, "", "#backtest")


# --- results as CSV under the session -----------------------------------------------------------

@blp.get("/jobs/<job_id>")
def job(job_id: str):
    _require_tenant()
    # The same document as GET /v1/jobs/<id> (404 for unknown ids and other tenants' jobs),
    # under the session: the page's links work in a browser, which sends no Bearer header.
    answer = job_answer(job_id)
    if isinstance(answer, flask.Response):
        return answer
    if isinstance(answer, tuple):
        body, status, headers = answer
        return flask.jsonify(body), status, headers
    return flask.jsonify(answer)


@blp.get("/jobs/<job_id>/results.csv")
def results_csv(job_id: str):
    _require_tenant()
    # The same download as /v1 (404 for unknown ids and other tenants' jobs), under the session.
    return results_csv_response(job_id)
