"""Every Redis key name Vigil uses, in one place.

Tenant first, so one tenant's data never shares a key with another's. Tenant names
contain no ':' (see config), so the names below cannot collide.

Hash tags (issue 17: the store on a Redis Cluster). Redis Cluster puts a key in the slot of
the text between its first '{' and the next '}', and a script or MULTI may only touch keys
of one slot. So:
- a tenant's own state carries ``{<tenant>}`` (jobs, recent jobs, rate windows, idempotency,
  webhook secrets and failures, the tenant's set of event types, its inbox and job queue
  with their claims);
- the state of one event type of a tenant carries ``{<tenant>:<event type>}`` (baselines,
  history, models, settings, feedback, episodes, level runs, the batch markers and counts
  its merges write): every merge, feedback or settings change is one slot, and types spread
  over the cluster;
- the keys tasks.eta's scripts use together (the pending events and the judged-events
  buckets) carry ``{work}``: one slot; the rings of tenants with work carry their own tags
  ({events-ring}, {jobs-ring});
- the other global keys (workers, known types, scheduled webhooks, ...) carry no tag: each
  its own slot, each written by single commands.
On one Redis the tags are just characters of the names. Names before the tags (the key
scheme 1) are kept at the end of this file for tasks.keymigration only.
"""

from collections.abc import Sequence

from redis.crc import key_slot

PREFIX = "vigil"
# The key scheme these names are (tasks.keymigration writes it to key_scheme() when done).
SCHEME = 2


def tenant_tag(tenant: str) -> str:
    """The hash tag of a tenant's own keys."""
    return f"{{{tenant}}}"


def type_tag(tenant: str, event_type: str) -> str:
    """The hash tag of a tenant's event type. Event types cannot hold braces (the API's rule),
    but were one to, its tag would end at its first '}': still the same for all its keys."""
    return f"{{{tenant}:{event_type}}}"


def _tenant(tenant: str) -> str:
    return f"{PREFIX}:{tenant_tag(tenant)}"


def _typed(tenant: str, event_type: str) -> str:
    return f"{PREFIX}:{type_tag(tenant, event_type)}"


WORK = f"{PREFIX}:{{work}}"


class CrossSlot(ValueError):
    """A script or transaction was given keys of more than one cluster slot: on a Redis Cluster
    it would be refused (CROSSSLOT), so it is refused everywhere, before anything is sent."""


def slot(name: str) -> int:
    """The Redis Cluster slot of a key (CRC16 of its hash tag, or of the whole name)."""
    return key_slot(name.encode())


def check_one_slot(names: Sequence[str]) -> None:
    """Raise CrossSlot unless every key in ``names`` is in one slot. The store's scripts are
    run through this on one Redis too (tasks.store), so the single-Redis tests catch a script
    that a cluster would refuse."""
    if len(names) > 1:
        first = slot(names[0])
        strays = [n for n in names[1:] if slot(n) != first]
        if strays:
            raise CrossSlot(f"keys of different cluster slots in one call: {names[0]!r} and "
                            f"{strays[0]!r}")


def job(tenant: str, job_id: str) -> str:
    """Hash: status, progress, timestamps, summary, callback, webhook state."""
    return f"{_tenant(tenant)}:job:{job_id}"


def job_events(tenant: str, job_id: str) -> str:
    """String: the submitted events as JSON."""
    return f"{_tenant(tenant)}:job:{job_id}:events"


def job_results(tenant: str, job_id: str) -> str:
    """String: the per-event results as JSON."""
    return f"{_tenant(tenant)}:job:{job_id}:results"


def job_partial(tenant: str, event_type: str, job_id: str) -> str:
    """Hash: batch id -> verdicts of the job's events of this type merged in that batch
    (deflated JSON), so a redelivered job reports what it merged before its worker died. In
    the type's slot: written in the merge's transaction."""
    return f"{_typed(tenant, event_type)}:partial:{job_id}"


def tenant_types(tenant: str) -> str:
    """Set: the tenant's event types with history or flagged events (each type's counts are in
    type_counts). Added to before the type's first merge (tasks.store), never removed."""
    return f"{_tenant(tenant)}:types"


def type_counts(tenant: str, event_type: str) -> str:
    """Hash: 'accepted' (events accepted into the type's history, feedback included) and
    'invalid' (events found invalid), written by the merges of the type."""
    return f"{_typed(tenant, event_type)}:counts"


def baseline(tenant: str, event_type: str) -> str:
    """Hash: field -> 'n,mean,m2', the running moments of that field."""
    return f"{_typed(tenant, event_type)}:baseline"


def recent_baseline(tenant: str, event_type: str) -> str:
    """Hash: field -> 'n,mean,var', an exponentially weighted (drift-aware) baseline."""
    return f"{_typed(tenant, event_type)}:recent"


def last_values(tenant: str, event_type: str) -> str:
    """Hash: field -> its latest value (for the change-from-previous feature)."""
    return f"{_typed(tenant, event_type)}:last"


def batch_applied(tenant: str, event_type: str, batch_id: str) -> str:
    """Marker (expiring): this batch was merged into the type's baselines and history already,
    so a redelivered job does not count its events twice."""
    return f"{_typed(tenant, event_type)}:applied:{batch_id}"


def recent_jobs(tenant: str) -> str:
    """List: the tenant's latest job ids, newest first (bounded)."""
    return f"{_tenant(tenant)}:recent-jobs"


def flagged(tenant: str, event_type: str) -> str:
    """List: recent invalid events as JSON rows {ts, v, codes} (bounded), for the UI."""
    return f"{_typed(tenant, event_type)}:flagged"


def history(tenant: str, event_type: str) -> str:
    """List: recent accepted events as JSON rows of numeric fields (bounded)."""
    return f"{_typed(tenant, event_type)}:history"


def history_since_training(tenant: str, event_type: str) -> str:
    """Integer: rows added to the history since the model was last trained."""
    return f"{_typed(tenant, event_type)}:history-new"


def model(tenant: str, event_type: str) -> str:
    """Hash: version, trained_at, metadata and the skops blob of the anomaly model."""
    return f"{_typed(tenant, event_type)}:model"


def training_lock(tenant: str, event_type: str) -> str:
    """Marker (expiring): a model for this event type is being trained right now."""
    return f"{_typed(tenant, event_type)}:training"


def idempotency(tenant: str, key_digest: str) -> str:
    """String (expiring): JSON record of the submission made with an Idempotency-Key, by the
    sha256 hex of that key (client keys may contain ':' and spaces)."""
    return f"{_tenant(tenant)}:idempotency:{key_digest}"


def rate_window(tenant: str, window: int) -> str:
    """Integer (expiring): the tenant's requests in one fixed rate-limit window (epoch second)."""
    return f"{_tenant(tenant)}:rate:{window}"


def webhooks_failed(tenant: str) -> str:
    """Sorted set: job ids whose webhook finally failed, scored by when."""
    return f"{_tenant(tenant)}:webhooks-failed"


def webhooks_scheduled() -> str:
    """Sorted set: '<tenant>:<job id>' webhook retries due later than a Celery countdown may
    wait (the broker's visibility timeout), scored by when they are due; beat sends them."""
    return f"{PREFIX}:webhooks-scheduled"


def known_types() -> str:
    """Set: '<tenant>:<event type>' for every type with history (beat walks it to retrain)."""
    return f"{PREFIX}:known-types"


def replication_fence(tenant: str) -> str:
    """String: written just before the API's WAIT for replicas (api/replication.py), so the
    WAIT counts from a write made after everything the submission stored or sent."""
    return f"{_tenant(tenant)}:replication-fence"


def events_inbox() -> str:
    """List: '<tenant>:<job id>' of single-event jobs, one inbox for every tenant, as written
    before inboxes were per tenant (tenant_inbox); the sweep moves what it finds there into
    the tenants' inboxes (tasks.inbox.migrate_legacy)."""
    return f"{PREFIX}:events-inbox"


def events_claimed() -> str:
    """Sorted set: '<tenant>:<job id>' claimed from events_inbox, as written before inboxes were
    per tenant; the sweep moves them into the tenants' inboxes."""
    return f"{PREFIX}:events-claimed"


# The fair lanes (tasks.inbox, tasks.job_queue): per-tenant lists drained by rounds across the
# tenants that have work. The tenant is a hash tag ({tenant}): a script touches the keys of one
# tenant only, which then share a Redis Cluster slot; the rings of tenants with work are global
# keys, changed by separate commands.

def tenant_inbox(tenant: str) -> str:
    """List: job ids of the tenant's single-event jobs waiting for the events worker, oldest
    first (tasks.inbox)."""
    return f"{PREFIX}:{{{tenant}}}:events-inbox"


def tenant_inbox_claimed(tenant: str) -> str:
    """Sorted set: job ids taken from the tenant's inbox by a worker, scored by when the claim
    lapses (a worker that died leaves them here; the sweep puts them back)."""
    return f"{PREFIX}:{{{tenant}}}:events-claimed"


def events_ring() -> str:
    """Set: tenants whose inbox has (or may have) entries: the events worker's round goes over
    these (tasks.inbox). Shares its hash tag with events_draining: one script reads both."""
    return f"{PREFIX}:{{events-ring}}:tenants"


def events_draining() -> str:
    """String (expiring): an events worker is draining and will look at the ring again soon
    (tasks.micro_batch lingers after the ring empties); while it exists, the API sends no wake
    message for a tenant that joins an empty ring."""
    return f"{PREFIX}:{{events-ring}}:draining"


def job_queue(tenant: str) -> str:
    """List: ids of the tenant's jobs waiting for a worker of the default queue, oldest first
    (tasks.job_queue)."""
    return f"{PREFIX}:{{{tenant}}}:job-queue"


def job_queue_claimed(tenant: str) -> str:
    """Sorted set: ids of the tenant's jobs taken by a worker, scored by when the claim lapses."""
    return f"{PREFIX}:{{{tenant}}}:job-claimed"


def jobs_ring() -> str:
    """Sorted set: tenants with jobs waiting, scored by their virtual time (events served over
    their weight): the next job is the head of the lowest-scored tenant's queue
    (tasks.job_queue). Shares its hash tag with jobs_clock: one script reads and writes both."""
    return f"{PREFIX}:{{jobs-ring}}:tenants"


def jobs_clock() -> str:
    """String: the virtual time of the latest job handed out; a tenant joining jobs_ring starts
    there, so time spent idle earns no credit."""
    return f"{PREFIX}:{{jobs-ring}}:clock"


def jobs_handed_at() -> str:
    """String: when (epoch seconds) a job was last handed out, or the sweep last sent messages
    again for jobs that waited with none handed out (tasks.job_queue.stalled). Shares
    jobs_ring's hash tag: the script that charges a tenant for a job sets it."""
    return f"{PREFIX}:{{jobs-ring}}:handed-at"


def job_claims() -> str:
    """Hash: Celery task id -> '<tenant>:<job id>' of the job that task claimed, so a message
    redelivered after its worker died runs the job its first delivery claimed."""
    return f"{PREFIX}:job-claims"


def workers() -> str:
    """Sorted set: "<queue> <worker hostname>" -> the Redis time (epoch seconds) of that
    worker's last heartbeat (tasks.heartbeat); /metrics counts the live ones per queue."""
    return f"{PREFIX}:workers"


def ui_session_key() -> str:
    """String (no expiry): the random key that signs /ui session cookies when VIGIL_SECRET_KEY
    is not set; written once (SET NX), so every API process and restart signs alike."""
    return f"{PREFIX}:ui-session-key"


def webhook_secrets(tenant: str) -> str:
    """Hash: the tenant's webhook signing secrets (tasks/webhook_secrets.py): current,
    created_at, and while a rotation overlaps, previous and previous_expires_at."""
    return f"{_tenant(tenant)}:webhook-secrets"


def episode_state(tenant: str, event_type: str) -> str:
    """String: JSON {open: the open episode or null, quiet: valid events since its last
    flagged one} (ml.episodes.State), read when a chunk is judged, written when it is merged."""
    return f"{_typed(tenant, event_type)}:episode-state"


def episodes(tenant: str, event_type: str) -> str:
    """Hash: episode id -> the episode as JSON (ml.episodes), the latest ones only."""
    return f"{_typed(tenant, event_type)}:episodes"


def episode_index(tenant: str, event_type: str) -> str:
    """Sorted set: episode ids scored by opened_at (bounded; the hash keeps the same ids)."""
    return f"{_typed(tenant, event_type)}:episode-index"


def episode_webhook(tenant: str) -> str:
    """String: JSON {url, created_at}: where the tenant's episode.opened / episode.closed
    webhooks go."""
    return f"{_tenant(tenant)}:episode-webhook"


def level_runs(tenant: str, event_type: str) -> str:
    """Hash: field -> JSON {side, values}: its out-of-range values in a row so far, all on one
    side (ml.level_shift.Run; at most VIGIL_LEVEL_SHIFT_RUN of them), read when a chunk is
    judged, written when it is merged; a field with no run has no entry."""
    return f"{_typed(tenant, event_type)}:level-runs"


def level_shift_at(tenant: str, event_type: str) -> str:
    """String: the timestamp of the event that completed the type's latest level shift. An
    anomaly model trained before it is set aside until one is trained on the new level."""
    return f"{_typed(tenant, event_type)}:level-shift-at"


def type_settings(tenant: str, event_type: str) -> str:
    """Hash: version (0 or absent: the environment's settings), overrides (JSON: the
    per-type settings set with PUT /v1/event-types/{type}/settings), updated_at."""
    return f"{_typed(tenant, event_type)}:settings"


def type_settings_log(tenant: str, event_type: str) -> str:
    """List: every settings change of the type, newest first, as JSON {version, at, before,
    after} (bounded)."""
    return f"{_typed(tenant, event_type)}:settings-log"


def feedback(tenant: str, event_type: str) -> str:
    """Hash: '<job id>:<index>' -> the event's current feedback as JSON {label, note, at,
    by, ts, v, valid, in_history} (tasks.feedback)."""
    return f"{_typed(tenant, event_type)}:feedback"


def feedback_log(tenant: str, event_type: str) -> str:
    """List: the audit trail of the type's feedback, newest first, as JSON {event, at, by,
    before, after} (bounded)."""
    return f"{_typed(tenant, event_type)}:feedback-log"


def judged(lane: str) -> str:
    """Hash: epoch second -> events a lane's workers judged in it ('jobs': the default queue's
    jobs, 'events': the single-event inbox), the last minute or so (tasks.eta)."""
    return f"{WORK}:judged:{lane}"


def judging_ms(lane: str) -> str:
    """Hash: epoch second -> milliseconds a lane's workers spent judging the events counted in
    keys.judged that second (summed over worker processes; tasks.eta)."""
    return f"{WORK}:judging-ms:{lane}"


def pending_events() -> str:
    """Hash: '<tenant>:<job id>' -> '<created_at> <events not yet judged>' of each unfinished job
    on the default queue (tasks.eta); dropped when the job finishes, or by the sweep."""
    return f"{WORK}:pending-events"


def key_scheme() -> str:
    """String: the key scheme the store's names follow (SCHEME), written by tasks.keymigration
    once the names of an older scheme were moved; absent: not migrated yet."""
    return f"{PREFIX}:key-scheme"


def key_scheme_lock() -> str:
    """Marker (expiring): a process is moving the store's keys to SCHEME right now."""
    return f"{PREFIX}:key-scheme-lock"


# --- key scheme 1 (before hash tags), for tasks.keymigration only ---------------------------
# 'vigil:<tenant>:<kind>[:<rest>]' and a few untagged globals. A tenant name holds no ':',
# '{' or '}', so a scheme-2 name never reads as one of these.

# Scheme 1's 'vigil:<tenant>:<kind>:<event type>' -> the type's key of scheme 2.
LEGACY_TYPE_KINDS = {"baseline": baseline, "recent": recent_baseline, "last": last_values,
                     "history": history, "history-new": history_since_training, "model": model,
                     "training": training_lock, "flagged": flagged,
                     "episode-state": episode_state, "episodes": episodes,
                     "episode-index": episode_index, "level-runs": level_runs,
                     "level-shift-at": level_shift_at, "settings": type_settings,
                     "settings-log": type_settings_log, "feedback": feedback,
                     "feedback-log": feedback_log}
# Scheme 1's 'vigil:<tenant>:<kind>[:<rest>]' of the tenant's own -> the key of scheme 2.
LEGACY_TENANT_KINDS = {"recent-jobs": lambda tenant, rest: recent_jobs(tenant),
                       "idempotency": idempotency,
                       "rate": rate_window,
                       "webhooks-failed": lambda tenant, rest: webhooks_failed(tenant),
                       "webhook-secrets": lambda tenant, rest: webhook_secrets(tenant),
                       "episode-webhook": lambda tenant, rest: episode_webhook(tenant)}


def legacy_event_types(tenant: str) -> str:
    """Scheme 1's hash: event type -> events accepted (now type_counts' 'accepted')."""
    return f"{PREFIX}:{tenant}:event-types"


def legacy_invalid_counts(tenant: str) -> str:
    """Scheme 1's hash: event type -> events found invalid (now type_counts' 'invalid')."""
    return f"{PREFIX}:{tenant}:invalid-counts"


# Scheme 1's names of the {work} keys, with their scheme-2 names. (The one inbox every tenant
# shared and its claims keep their names: tasks.inbox.migrate_legacy empties them into the
# tenants' inboxes.)
LEGACY_WORK = {f"{PREFIX}:pending-events": pending_events(),
               **{f"{PREFIX}:judged:{lane}": judged(lane) for lane in ("jobs", "events")},
               **{f"{PREFIX}:judging-ms:{lane}": judging_ms(lane) for lane in ("jobs", "events")}}
