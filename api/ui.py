"""/ui: a web page over the store for people: volumes, field histories against their band,
flagged events and the latest jobs. Plots are drawn here with matplotlib; nothing external.

Browsers cannot send a Bearer header, so /ui/login turns an API key into a signed session
cookie (path /ui, HttpOnly, SameSite=Lax) holding the tenant and a tag of the key it was made
from: removing that key from VIGIL_API_KEYS ends the session. A valid Bearer header works too.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import threading
from collections import Counter, OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

import flask
from flask import Blueprint
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from api.auth import tenant_for
from api.jobs import results_csv_response
from api.services import services
from core.config import Settings, key_digest
from tasks import store
from tasks.documents import iso

log = logging.getLogger(__name__)

blp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates")

MAX_TYPES = 10          # sections shown at once: the most active types
MAX_LISTED_TYPES = 500  # types offered in the selector
MAX_FIELDS = 6          # plots per type
MAX_JOBS = 20
MAX_KEY_CHARS = 1000
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

def secret_key(settings: Settings, environ=os.environ) -> str:
    """VIGIL_SECRET_KEY, else a key derived from the webhook secret: stable per deployment
    (every API process and restart agrees), and never the webhook secret itself."""
    explicit = (environ.get("VIGIL_SECRET_KEY") or "").strip()
    if explicit:
        return explicit
    return hmac.new(settings.webhook_secret.encode(), b"vigil/ui-session-key/v1",
                    hashlib.sha256).hexdigest()


@blp.record_once
def _configure(state) -> None:
    app = state.app
    if not app.secret_key:
        app.secret_key = secret_key(app.extensions["vigil"].settings)
    app.config.update(
        SESSION_COOKIE_NAME="vigil_ui",
        SESSION_COOKIE_PATH="/ui",  # the API under /v1 never sees the cookie
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )


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
    return flask.render_template("ui.html", login=True, error=error), status, headers


@blp.post("/login")
def login():
    key = flask.request.form.get("api_key", "").strip()
    api_keys = dict(services().settings.api_keys)
    tenant = tenant_for(f"Bearer {key}", api_keys) if 0 < len(key) <= MAX_KEY_CHARS else None
    if tenant is None:
        return _login_page("That API key is not valid.", 401)
    flask.session.clear()
    flask.session.permanent = True
    flask.session.update(tenant=tenant, key=_key_tag(key_digest(key)))
    return flask.redirect(flask.url_for("ui.index"), 303)


@blp.route("/logout", methods=["GET", "POST"])
def logout():
    flask.session.clear()
    return flask.redirect(flask.url_for("ui.index"), 303)


# --- the page --------------------------------------------------------------------------------

def _type_section(r, tenant: str, event_type: str, accepted: int, invalid: int) -> dict:
    baseline = store.load_baseline(r, tenant, event_type)
    flagged = store.flagged_rows(r, tenant, event_type)
    names = sorted(baseline, key=lambda f: (-baseline[f].n, f))[:MAX_FIELDS]
    z = services().settings.z_threshold
    fields = []
    for name in names:
        m = baseline[name]
        fields.append({
            "name": name, "n": m.n, "mean": m.mean, "std": m.std,
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
            "model_version": store.model_version(r, tenant, event_type)}


def _job_row(job: dict) -> dict:
    summary = job.get("summary") if isinstance(job.get("summary"), dict) else {}
    job_id = job["job_id"]
    return {"id": job_id, "kind": job.get("kind"), "status": job.get("status"),
            "event_type": job.get("event_type"), "created_at": iso(job.get("created_at")),
            "events": summary.get("events", job.get("total")), "valid": summary.get("valid"),
            "invalid": summary.get("invalid"), "error": job.get("error"),
            "api_url": f"/v1/jobs/{job_id}", "api_csv_url": f"/v1/jobs/{job_id}/results.csv",
            "csv_url": flask.url_for("ui.results_csv", job_id=job_id)
            if job.get("status") == store.SUCCEEDED and job.get("kind") == "validate" else None}


@blp.get("/")
@blp.get("")  # registered first: url_for gives /ui
def index():
    tenant = current_tenant()
    if tenant is None:
        return _login_page()
    r = services().redis
    accepted, invalid = store.event_type_counts(r, tenant), store.invalid_counts(r, tenant)
    activity = {t: accepted.get(t, 0) + invalid.get(t, 0) for t in {*accepted, *invalid}}
    ranked = sorted(activity, key=lambda t: (-activity[t], t))
    chosen = flask.request.args.get("type", "")
    shown = [chosen] if chosen in activity else ranked[:MAX_TYPES]
    sections = [_type_section(r, tenant, t, accepted.get(t, 0), invalid.get(t, 0)) for t in shown]
    jobs = [job for job in (store.get_job(r, tenant, job_id)
                            for job_id in store.recent_job_ids(r, tenant, MAX_JOBS)) if job]
    return flask.render_template(
        "ui.html", login=False, tenant=tenant, sections=sections, chosen=chosen if chosen in
        activity else "", choices=ranked[:MAX_LISTED_TYPES], type_count=len(ranked),
        max_types=MAX_TYPES, z=services().settings.z_threshold,
        jobs=[_job_row(job) for job in jobs], band=BAND, flagged_colour=FLAGGED,
        session_login=not flask.request.headers.get("Authorization"))


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
    r, z = svc.redis, svc.settings.z_threshold
    # Every change to a type's history or flagged list bumps one of these counters, so they
    # version the plot; read before the data, a concurrent batch only costs a re-render.
    version = (store.event_type_counts(r, tenant).get(event_type, 0),
               store.invalid_counts(r, tenant).get(event_type, 0))
    key = (tenant, event_type, field, z, version)
    with _render_lock:
        png = _plots.get(key)
        if png is not None:
            _plots.move_to_end(key)
            return flask.Response(png, headers=PNG_HEADERS)
    moments = store.load_baseline(r, tenant, event_type, [field]).get(field)
    flagged = store.flagged_rows(r, tenant, event_type)
    if moments is None and not any(field in row.get("v", {}) for row in flagged):
        flask.abort(404)
    history = store.history_rows(r, tenant, event_type)
    with _render_lock:
        png = render_plot(history, flagged, field, moments.mean if moments else None,
                          moments.std if moments else None, z)
        _plots[key] = png
        while len(_plots) > PLOT_CACHE_SIZE:
            _plots.popitem(last=False)
    return flask.Response(png, headers=PNG_HEADERS)


# --- results as CSV under the session -----------------------------------------------------------

@blp.get("/jobs/<job_id>/results.csv")
def results_csv(job_id: str):
    _require_tenant()
    # The same download as /v1 (404 for unknown ids and other tenants' jobs), under the session.
    return results_csv_response(job_id)
