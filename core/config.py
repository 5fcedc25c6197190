"""One configuration, read once from the environment and shared by Flask and Celery."""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

DEV_API_KEY = "vigil-dev-key"
DEV_TENANT = "dev"
# base64("vigil-development-webhook-secret"), in the whsec_ form Standard Webhooks uses.
DEV_WEBHOOK_SECRET = "whsec_dmlnaWwtZGV2ZWxvcG1lbnQtd2ViaG9vay1zZWNyZXQ="


EVENTS_QUEUE = "events"
# Webhook deliveries wait on receivers (I/O, up to VIGIL_WEBHOOK_TIMEOUT per attempt): on their
# own queue and worker, so a slow receiver never holds a worker that judges events.
WEBHOOKS_QUEUE = "webhooks"
# Beat hands out webhook retries due later than a Celery countdown may wait, this often.
WEBHOOK_SWEEP_S = 5.0
# How often beat returns lapsed single-event and job claims to their tenants' inboxes and
# queues (tasks.micro_batch, tasks.next_job).
EVENTS_SWEEP_S = 5.0
BASELINE_MODES = ("both", "all_time", "recent", "robust")
DERIVED_FEATURES = ("time_of_day", "delta")
# The alert budget (VIGIL_ALERT_RATE) is split between the two rules: this share of it goes to
# the z-rule (its per-field thresholds are calibrated to flag Z_SHARE * rate of ordinary
# values), the rest to the anomaly model (its contamination). The only place it is set.
Z_SHARE = 0.3
# What an event type's own settings (PUT /v1/event-types/{type}/settings, tasks.type_settings)
# may override; every other setting is the service's, from the environment only.
TYPE_SETTINGS = ("z_threshold", "baseline_mode", "alert_rate", "derived_features",
                 "min_history", "check_fields", "ignore_fields")
TENANT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The API's socket timeout on the store: a request fails as an outage (503) past it.
API_REDIS_TIMEOUT_S = 5
# A WAIT for replicas (VIGIL_REDIS_WAIT_TIMEOUT_MS) must end well before that timeout.
REDIS_WAIT_TIMEOUT_MAX_MS = 4000
# Each question to a sentinel (where is the primary?) gives up after this long, so one
# unreachable sentinel only delays asking the next.
SENTINEL_TIMEOUT_S = 1.0


class ConfigError(ValueError):
    """The environment describes a configuration Vigil refuses to run with."""


def _parse_api_keys(raw: str) -> dict[str, str]:
    """``"tenant:key,tenant2:key2"`` -> {sha256(key): tenant}.

    Keys are kept only as digests so a lookup compares digests, never raw secrets. A key given
    twice is refused: the later entry would silently take it over (alice's key signing in as bob).
    """
    tenants: dict[str, str] = {}
    entry_of: dict[str, int] = {}  # digest -> its entry's number, to name a duplicate
    for index, item in enumerate(filter(None, (part.strip() for part in raw.split(",")))):
        tenant, sep, key = item.partition(":")
        if not sep or not tenant.strip() or not key.strip():
            # Never echo the entry: without its ':' it may be a bare secret.
            raise ConfigError(f"VIGIL_API_KEYS entry #{index + 1} is not 'tenant:key'")
        tenant = tenant.strip()
        if not TENANT_NAME.fullmatch(tenant):
            # Tenant names are part of Redis key names (core.keys): no ':' or spaces.
            raise ConfigError(f"VIGIL_API_KEYS tenant {tenant!r} must match {TENANT_NAME.pattern}")
        digest = key_digest(key.strip())
        if digest in tenants:
            # Named by position and tenant, never by the key itself.
            raise ConfigError(
                f"VIGIL_API_KEYS entries #{entry_of[digest]} (tenant {tenants[digest]!r}) and "
                f"#{index + 1} (tenant {tenant!r}) have the same key; give every entry a key "
                "of its own")
        tenants[digest], entry_of[digest] = tenant, index + 1
    return tenants


# A tenant's weight is its share of the workers next to the others with work waiting
# (VIGIL_TENANT_WEIGHTS); bounded so one tenant cannot be set to starve the rest for good.
MAX_TENANT_WEIGHT = 1000.0


def _parse_weights(raw: str) -> dict[str, float]:
    """``"acme:3,small:1"`` -> {"acme": 3.0, "small": 1.0}."""
    weights: dict[str, float] = {}
    for index, item in enumerate(filter(None, (part.strip() for part in raw.split(",")))):
        tenant, sep, value = (x.strip() for x in item.partition(":"))
        if not sep or not tenant or not value:
            raise ConfigError(f"VIGIL_TENANT_WEIGHTS entry #{index + 1} ({item!r}) is not "
                              "'tenant:weight' (e.g. acme:3,small:1)")
        if not TENANT_NAME.fullmatch(tenant):
            raise ConfigError(f"VIGIL_TENANT_WEIGHTS tenant {tenant!r} must match "
                              f"{TENANT_NAME.pattern}")
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not (math.isfinite(weight) and 0 < weight <= MAX_TENANT_WEIGHT):
            raise ConfigError(f"VIGIL_TENANT_WEIGHTS weight of {tenant!r} is {value!r}: it must be "
                              f"a number above 0 and at most {MAX_TENANT_WEIGHT:g} (1 if unset)")
        if tenant in weights:
            raise ConfigError(f"VIGIL_TENANT_WEIGHTS gives tenant {tenant!r} a weight twice")
        weights[tenant] = weight
    return weights


def _names(raw: str) -> tuple[str, ...]:
    """"a, b" -> ("a", "b"); "none" -> ()."""
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    return () if names == ("none",) else names


def _flag(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


_flag.__name__ = "boolean (true/false)"


def _private_networks(raw: str) -> tuple[str, ...]:
    """"true" -> every network (core/ssrf.py still refuses metadata addresses); "false" -> none;
    else a comma list of networks such as "127.0.0.0/8,::1"."""
    if raw.lower() in ("1", "true", "yes", "on", "all"):
        return ("0.0.0.0/0", "::/0")
    if raw.lower() in ("0", "false", "no", "off", "none"):
        return ()
    return tuple(str(ipaddress.ip_network(n.strip(), strict=False)) for n in raw.split(",") if n.strip())


_private_networks.__name__ = "list of networks (127.0.0.0/8,::1) or true/false"


def _seconds(raw: str) -> tuple[float, ...]:
    """"5, 300, 1800" -> (5.0, 300.0, 1800.0)."""
    delays = tuple(float(x) for x in raw.replace(" ", "").split(",") if x)
    if not delays or any(not (math.isfinite(d) and d >= 0) for d in delays):
        raise ValueError(raw)
    return delays


_seconds.__name__ = "comma-separated list of seconds"


def _sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    """"h1:26379, h2:26380" -> (("h1", 26379), ("h2", 26380)); IPv6 as "[::1]:26379"."""
    found = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        host, sep, port = item.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(item)
        found.append((host, int(port)))
    if not found:
        raise ValueError(raw)
    return tuple(found)


_sentinels.__name__ = "list of sentinels (host:port,host:port)"


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The store (jobs, baselines, history, models): VIGIL_STORE_URL, else REDIS_URL.
    store_url: str | None = None
    # The store is a Redis Cluster (core/connections.py); its keys carry hash tags (core/keys.py).
    store_cluster: bool = False
    # Celery's broker: Redis (the default: REDIS_URL's Redis, plain or through its sentinels)
    # or RabbitMQ (amqp://...).
    broker_url: str | None = None
    # Redis Sentinel (VIGIL_REDIS_SENTINELS): the store, and the broker unless VIGIL_BROKER_URL
    # names another, is the primary these sentinels name for redis_sentinel_master, found
    # again after a failover; redis_url then gives only the database, user and password.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str | None = None
    # The sentinels' own password (their requirepass), if they have one.
    redis_sentinel_password: str | None = None
    # Before answering 202 to a submission, the API waits (Redis WAIT) until this many
    # replicas have the job, at most redis_wait_timeout_ms (api/replication.py); 0: off.
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 500
    # RabbitMQ only: "quorum" declares Vigil's queues as quorum queues (replicated, the
    # production choice), "classic" as classic ones.
    broker_queue_type: str = "classic"
    env: str = "development"
    # {sha256(api key): tenant}
    api_keys: Mapping[str, str] = field(default_factory=lambda: {key_digest(DEV_API_KEY): DEV_TENANT})
    webhook_secret: str = DEV_WEBHOOK_SECRET
    # Share of ordinary events of a type that may be flagged (the alert budget, Z_SHARE).
    alert_rate: float = 0.001
    # A fixed z threshold for every field (VIGIL_Z_THRESHOLD); None: calibrated per field on
    # the type's history to the z-rule's share of alert_rate (ml.calibration).
    z_threshold: float | None = None
    min_history: int = 30
    # Which baseline judges a value: "both" (out of range of the all-time AND the recent
    # baseline), "all_time" or "recent".
    baseline_mode: str = "both"
    # The recent baseline forgets with this half-life, counted in events.
    recent_half_life: float = 1000.0
    # Values beyond mean +/- clip*std move the recent baseline as if they were at that edge:
    # a spike barely moves it, a lasting shift is absorbed within a few half-lives.
    recent_clip: float = 3.0
    # This many out-of-range values of a field in a row, all on one side, are a new level: the
    # last gets a level_shift warning and the recent baseline re-seeds from them
    # (ml.level_shift). 0: off.
    level_shift_run: int = 5
    # Derived model features: "time_of_day" and/or "delta" (change from the previous value).
    derived_features: tuple[str, ...] = ("time_of_day",)
    # Which payload fields are checked (None: every numeric one) and which never are. Set per
    # event type only (TYPE_SETTINGS); unchecked fields still join baselines and history, so
    # checking them again needs no new history.
    check_fields: tuple[str, ...] | None = None
    ignore_fields: tuple[str, ...] = ()
    model_min_rows: int = 50
    # Single events scored in micro-batches (off: one task per event, the slow reference).
    micro_batch: bool = True
    history_max_rows: int = 10_000
    # The model's flag rate on its history (VIGIL_ANOMALY_CONTAMINATION); None: derived from
    # alert_rate (model_contamination).
    anomaly_contamination: float | None = None
    retrain_min_new_rows: int = 500
    retrain_interval_s: float = 60.0
    job_ttl_s: int = 24 * 3600
    max_events_per_job: int = 10_000
    max_body_bytes: int = 10 * 1024 * 1024
    webhook_max_attempts: int = 8
    # An episode (consecutive flagged events of a type) closes after this many valid events.
    episode_quiet: int = 10
    webhook_timeout_s: float = 10.0
    # Delay before each webhook retry, seconds (Svix's published schedule: 5 s, 5 min, 30 min,
    # 2 h, 5 h, 10 h, 10 h), each +/-20% jitter; a receiver's Retry-After can only lengthen it.
    webhook_schedule_s: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    # Celery/Redis: a task not acknowledged within this time is redelivered.
    visibility_timeout_s: int = 3600
    # Idempotency-Key records (api/idempotency.py) are kept this long.
    idempotency_ttl_s: int = 24 * 3600
    # Non-public networks callback URLs may resolve into (core/ssrf.py); none by default.
    allow_private_callbacks: tuple[str, ...] = ()
    # Requests per second per tenant on /v1 (api/ratelimit.py); 0: unlimited.
    rate_limit: int = 1000
    # Worker processes run this much nicer than they start (tasks/worker.py): where the API
    # and the workers share cores, busy workers yield the CPU to requests.
    worker_nice: int = 10
    # A worker's own /metrics port (tasks.metrics_server), for deployments where workers do
    # not share the API's PROMETHEUS_MULTIPROC_DIR (docker compose); None: no server.
    worker_metrics_port: int | None = None
    # Tenant -> weight (VIGIL_TENANT_WEIGHTS): each tenant's share of the workers while others
    # have work waiting too (tasks.inbox, tasks.job_queue); a tenant not named weighs 1.
    tenant_weights: Mapping[str, float] = field(default_factory=dict)

    def weight(self, tenant: str) -> float:
        """The tenant's weight in the fair lanes (1 unless VIGIL_TENANT_WEIGHTS says)."""
        return self.tenant_weights.get(tenant, 1.0)

    @property
    def tenants(self) -> frozenset[str]:
        """Every tenant with an API key."""
        return frozenset(self.api_keys.values())

    @property
    def store_redis_url(self) -> str:
        """The store's URL: VIGIL_STORE_URL, else REDIS_URL."""
        return self.store_url or self.redis_url

    @property
    def recent_alpha(self) -> float:
        """Weight of each new value in the recent baseline, from its half-life."""
        return 1.0 - 0.5 ** (1.0 / self.recent_half_life)

    @property
    def z_rate(self) -> float:
        """The z-rule's share of the alert budget: what its calibrated thresholds aim at."""
        return Z_SHARE * self.alert_rate

    @property
    def model_contamination(self) -> float:
        """The anomaly model's flag rate: VIGIL_ANOMALY_CONTAMINATION, else the model's share
        of the alert budget."""
        if self.anomaly_contamination is not None:
            return self.anomaly_contamination
        return (1.0 - Z_SHARE) * self.alert_rate

    def broker_countdown(self, delay_s: float) -> float:
        """A task countdown the broker can keep. RabbitMQ's native delayed delivery (quorum
        queues) counts whole seconds and refuses less than one (kombu raises "countdown must
        be a positive number", and the task would be lost): rounded up there."""
        if self.broker_queue_type == "quorum":
            return float(max(1, math.ceil(delay_s)))
        return delay_s

    def checks(self, field_name: str) -> bool:
        """Whether values of this payload field are judged (check_fields, ignore_fields)."""
        if field_name in self.ignore_fields:
            return False
        return self.check_fields is None or field_name in self.check_fields

    def for_type(self, overrides: Mapping[str, Any]) -> Settings:
        """These settings with an event type's overrides (names in TYPE_SETTINGS; lists as
        stored in JSON are taken as tuples). Raises ConfigError for an unknown name or a
        value check() refuses."""
        unknown = sorted(set(overrides) - set(TYPE_SETTINGS))
        if unknown:
            raise ConfigError(f"not a per-type setting: {', '.join(unknown)}")
        if not overrides:
            return self
        typed = replace(self, **{name: tuple(value) if isinstance(value, list) else value
                                 for name, value in overrides.items()})
        typed.check()
        return typed

    def type_defaults(self) -> dict[str, Any]:
        """The per-type settings as these settings have them (the environment's)."""
        return {name: getattr(self, name) for name in TYPE_SETTINGS}

    @property
    def webhook_secrets(self) -> tuple[str, ...]:
        """Secrets that sign webhooks: one, or two while rotating ("whsec_new whsec_old")."""
        return tuple(self.webhook_secret.replace(",", " ").split())

    @property
    def single_tenant(self) -> bool:
        """One tenant only: VIGIL_WEBHOOK_SECRET may then sign its webhooks (tasks.webhook_secrets);
        with several, each signs with its own."""
        return len(set(self.api_keys.values())) == 1

    @property
    def using_dev_key(self) -> bool:
        return key_digest(DEV_API_KEY) in self.api_keys

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        defaults = cls()

        def get(name: str, default, cast=str):
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                return cast(raw.strip())
            except ValueError as exc:
                raise ConfigError(f"{name}={raw!r} is not a valid {cast.__name__}") from exc

        mode = get("VIGIL_ENV", defaults.env)
        if mode not in ("development", "production"):
            raise ConfigError("VIGIL_ENV must be 'development' or 'production'")
        keys_raw = env.get("VIGIL_API_KEYS", "")
        api_keys = _parse_api_keys(keys_raw) if keys_raw.strip() else dict(defaults.api_keys)
        secret = get("VIGIL_WEBHOOK_SECRET", defaults.webhook_secret)
        settings = cls(
            redis_url=get("REDIS_URL", defaults.redis_url),
            store_url=get("VIGIL_STORE_URL", defaults.store_url),
            store_cluster=get("VIGIL_STORE_CLUSTER", defaults.store_cluster, _flag),
            broker_url=get("VIGIL_BROKER_URL", defaults.broker_url),
            broker_queue_type=get("VIGIL_BROKER_QUEUE_TYPE", defaults.broker_queue_type),
            redis_sentinels=get("VIGIL_REDIS_SENTINELS", defaults.redis_sentinels, _sentinels),
            redis_sentinel_master=get("VIGIL_REDIS_SENTINEL_MASTER",
                                      defaults.redis_sentinel_master),
            redis_sentinel_password=get("VIGIL_REDIS_SENTINEL_PASSWORD",
                                        defaults.redis_sentinel_password),
            redis_wait_replicas=get("VIGIL_REDIS_WAIT_REPLICAS", defaults.redis_wait_replicas, int),
            redis_wait_timeout_ms=get("VIGIL_REDIS_WAIT_TIMEOUT_MS", defaults.redis_wait_timeout_ms,
                                      int),
            env=mode,
            api_keys=api_keys,
            webhook_secret=secret,
            alert_rate=get("VIGIL_ALERT_RATE", defaults.alert_rate, float),
            z_threshold=get("VIGIL_Z_THRESHOLD", defaults.z_threshold, float),
            min_history=get("VIGIL_MIN_HISTORY", defaults.min_history, int),
            baseline_mode=get("VIGIL_BASELINE", defaults.baseline_mode),
            recent_half_life=get("VIGIL_RECENT_HALF_LIFE", defaults.recent_half_life, float),
            recent_clip=get("VIGIL_RECENT_CLIP", defaults.recent_clip, float),
            level_shift_run=get("VIGIL_LEVEL_SHIFT_RUN", defaults.level_shift_run, int),
            derived_features=get("VIGIL_DERIVED_FEATURES", defaults.derived_features, _names),
            micro_batch=get("VIGIL_MICRO_BATCH", defaults.micro_batch, _flag),
            model_min_rows=get("VIGIL_MODEL_MIN_ROWS", defaults.model_min_rows, int),
            history_max_rows=get("VIGIL_HISTORY_MAX_ROWS", defaults.history_max_rows, int),
            anomaly_contamination=get(
                "VIGIL_ANOMALY_CONTAMINATION", defaults.anomaly_contamination, float
            ),
            retrain_min_new_rows=get("VIGIL_RETRAIN_MIN_NEW_ROWS", defaults.retrain_min_new_rows, int),
            retrain_interval_s=get("VIGIL_RETRAIN_INTERVAL", defaults.retrain_interval_s, float),
            job_ttl_s=get("VIGIL_JOB_TTL", defaults.job_ttl_s, int),
            max_events_per_job=get("VIGIL_MAX_EVENTS_PER_JOB", defaults.max_events_per_job, int),
            max_body_bytes=get("VIGIL_MAX_BODY_BYTES", defaults.max_body_bytes, int),
            webhook_max_attempts=get("VIGIL_WEBHOOK_MAX_ATTEMPTS", defaults.webhook_max_attempts, int),
            episode_quiet=get("VIGIL_EPISODE_QUIET", defaults.episode_quiet, int),
            webhook_timeout_s=get("VIGIL_WEBHOOK_TIMEOUT", defaults.webhook_timeout_s, float),
            webhook_schedule_s=get("VIGIL_WEBHOOK_SCHEDULE", defaults.webhook_schedule_s, _seconds),
            visibility_timeout_s=get("VIGIL_VISIBILITY_TIMEOUT", defaults.visibility_timeout_s, int),
            idempotency_ttl_s=get("VIGIL_IDEMPOTENCY_TTL", defaults.idempotency_ttl_s, int),
            allow_private_callbacks=get("VIGIL_ALLOW_PRIVATE_CALLBACKS", defaults.allow_private_callbacks,
                                        _private_networks),
            rate_limit=get("VIGIL_RATE_LIMIT", defaults.rate_limit, int),
            worker_nice=get("VIGIL_WORKER_NICE", defaults.worker_nice, int),
            worker_metrics_port=get("VIGIL_WORKER_METRICS_PORT", defaults.worker_metrics_port, int),
            tenant_weights=_parse_weights(env.get("VIGIL_TENANT_WEIGHTS", "")),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse settings that would be unsafe or meaningless, with a message saying which."""
        if self.env == "production":
            if self.using_dev_key:
                raise ConfigError(
                    "VIGIL_ENV=production refuses the development API key: set VIGIL_API_KEYS"
                )
            if self.single_tenant and DEV_WEBHOOK_SECRET in self.webhook_secrets:
                raise ConfigError(
                    "VIGIL_ENV=production refuses the development webhook secret: "
                    "set VIGIL_WEBHOOK_SECRET"
                )
        if self.store_cluster and self.redis_wait_replicas:
            # WAIT counts one node's replicas from the last write of its connection; redis-py's
            # cluster client sends it to every node and adds the answers up.
            raise ConfigError("VIGIL_REDIS_WAIT_REPLICAS is not supported with "
                              "VIGIL_STORE_CLUSTER=true (yet): set it to 0")
        if self.store_cluster and (self.broker_url or self.redis_url) == self.store_redis_url:
            # kombu has no Redis Cluster transport: Celery's messages need a plain (or
            # Sentinel) Redis, or RabbitMQ, beside the cluster.
            raise ConfigError(
                "VIGIL_STORE_CLUSTER=true: Celery's broker cannot be a Redis Cluster; set "
                "VIGIL_STORE_URL to a node of the cluster and REDIS_URL (or VIGIL_BROKER_URL) to "
                "a plain Redis or RabbitMQ")
        if self.broker_queue_type not in ("classic", "quorum"):
            raise ConfigError("VIGIL_BROKER_QUEUE_TYPE must be 'classic' or 'quorum'")
        if self.broker_queue_type == "quorum" and not (self.broker_url or "").startswith(
                ("amqp://", "amqps://", "pyamqp://")):
            raise ConfigError("VIGIL_BROKER_QUEUE_TYPE=quorum needs RabbitMQ as the broker "
                              "(VIGIL_BROKER_URL=amqp://...)")
        self._check_redis()
        if not 0 < self.alert_rate < 0.5:
            raise ConfigError("VIGIL_ALERT_RATE must be in (0, 0.5): the share of ordinary "
                              "events that may be flagged, e.g. 0.001 for 1 in 1,000")
        if self.z_threshold is not None and not (math.isfinite(self.z_threshold)
                                                 and self.z_threshold > 0):
            raise ConfigError("VIGIL_Z_THRESHOLD must be a positive finite number, or unset "
                              "(thresholds calibrated per field to VIGIL_ALERT_RATE)")
        if self.baseline_mode not in BASELINE_MODES:
            raise ConfigError(f"VIGIL_BASELINE must be one of {', '.join(BASELINE_MODES)}")
        if not (math.isfinite(self.recent_half_life) and self.recent_half_life >= 1):
            raise ConfigError("VIGIL_RECENT_HALF_LIFE must be at least 1 (events)")
        if not (math.isfinite(self.recent_clip) and self.recent_clip > 0):
            raise ConfigError("VIGIL_RECENT_CLIP must be a positive number")
        if self.level_shift_run == 1 or self.level_shift_run < 0:
            raise ConfigError("VIGIL_LEVEL_SHIFT_RUN must be 0 (off) or at least 2 (out-of-range "
                              "values in a row that make a level shift)")
        unknown = set(self.derived_features) - set(DERIVED_FEATURES)
        if unknown:
            raise ConfigError(f"VIGIL_DERIVED_FEATURES: unknown {', '.join(sorted(unknown))}; "
                              f"choose from {', '.join(DERIVED_FEATURES)}")
        if self.min_history < 2:
            raise ConfigError("VIGIL_MIN_HISTORY must be at least 2")
        if self.anomaly_contamination is not None and not 0 < self.anomaly_contamination < 0.5:
            raise ConfigError("VIGIL_ANOMALY_CONTAMINATION must be in (0, 0.5), or unset "
                              "(derived from VIGIL_ALERT_RATE)")
        for name in ("model_min_rows", "history_max_rows", "job_ttl_s", "max_events_per_job",
                     "max_body_bytes", "webhook_max_attempts", "idempotency_ttl_s",
                     "episode_quiet"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.rate_limit < 0:
            raise ConfigError("VIGIL_RATE_LIMIT must be 0 (no limit) or more requests per second")
        if not 0 <= self.worker_nice <= 19:
            raise ConfigError("VIGIL_WORKER_NICE must be between 0 (as started) and 19 (nicest)")
        unknown_tenants = sorted(set(self.tenant_weights) - self.tenants)
        if unknown_tenants:
            # Most likely a typo: the tenant it meant would silently keep weight 1.
            raise ConfigError(f"VIGIL_TENANT_WEIGHTS names {', '.join(map(repr, unknown_tenants))}, "
                              "which has no API key in VIGIL_API_KEYS")
        try:
            for network in self.allow_private_callbacks:
                ipaddress.ip_network(network, strict=False)
        except ValueError as exc:
            raise ConfigError(f"VIGIL_ALLOW_PRIVATE_CALLBACKS: {exc}") from None

    def _check_redis(self) -> None:
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise ConfigError("VIGIL_REDIS_SENTINELS needs VIGIL_REDIS_SENTINEL_MASTER: the name "
                              "the sentinels monitor the primary by (their 'sentinel monitor')")
        if (self.broker_url or "").startswith("sentinel://") and not self.redis_sentinel_master:
            raise ConfigError("VIGIL_BROKER_URL=sentinel://... needs VIGIL_REDIS_SENTINEL_MASTER "
                              "(the name the sentinels monitor the broker's primary by)")
        if self.redis_sentinel_master is not None and not re.fullmatch(
                r"[A-Za-z0-9_.-]{1,64}", self.redis_sentinel_master):
            raise ConfigError("VIGIL_REDIS_SENTINEL_MASTER must be a name of 1-64 characters "
                              "A-Z a-z 0-9 _ . -")
        if self.redis_sentinel_master and not (self.redis_sentinels or (
                self.broker_url or "").startswith("sentinel://")):
            raise ConfigError("VIGIL_REDIS_SENTINEL_MASTER is set but nothing uses Sentinel: set "
                              "VIGIL_REDIS_SENTINELS=host:port,host:port,...")
        if self.redis_sentinel_password and not self.redis_sentinel_master:
            raise ConfigError("VIGIL_REDIS_SENTINEL_PASSWORD is set but no sentinels are: set "
                              "VIGIL_REDIS_SENTINELS and VIGIL_REDIS_SENTINEL_MASTER")
        if self.redis_wait_replicas < 0:
            raise ConfigError("VIGIL_REDIS_WAIT_REPLICAS must be 0 (off) or the number of "
                              "replicas that must have a job before the API answers 202")
        # WAIT 0 would wait forever; and the wait must end before the API's own socket timeout
        # on the store (API_REDIS_TIMEOUT_S), or the request would fail as an outage instead.
        if not 0 < self.redis_wait_timeout_ms <= REDIS_WAIT_TIMEOUT_MAX_MS:
            raise ConfigError(f"VIGIL_REDIS_WAIT_TIMEOUT_MS must be between 1 and "
                              f"{REDIS_WAIT_TIMEOUT_MAX_MS} (milliseconds)")

    @property
    def broker_in_store(self) -> bool:
        """Whether Celery's broker is the store's own Redis (its queues are readable there)."""
        return self.broker_url is None or self.broker_url == self.redis_url

    def sentinel_broker_url(self) -> str:
        """kombu's Sentinel transport URL for the store's sentinels: one sentinel://
        per sentinel, joined by ';', each with REDIS_URL's password and database (kombu
        reads them from the first and gives them to the primary it finds)."""
        from redis.connection import parse_url

        params = parse_url(self.redis_url)
        auth = ""
        if params.get("password"):
            auth = f"{quote(params.get('username') or '', safe='')}:" \
                   f"{quote(params['password'], safe='')}@"
        return ";".join(f"sentinel://{auth}{f'[{h}]' if ':' in h else h}:{p}/{params.get('db', 0)}"
                        for h, p in self.redis_sentinels)

    def sentinel_kwargs(self) -> dict[str, Any]:
        """redis-py's connection arguments for the sentinels themselves (not the primary)."""
        found: dict[str, Any] = {"socket_timeout": SENTINEL_TIMEOUT_S,
                                 "socket_connect_timeout": SENTINEL_TIMEOUT_S}
        if self.redis_sentinel_password:
            found["password"] = self.redis_sentinel_password
        return found

    def celery(self) -> dict:
        """Celery's configuration keys for these settings."""
        conf = self._celery()
        if self.broker_queue_type == "quorum":
            # Every queue Vigil uses as a RabbitMQ quorum queue, on a topic exchange: Celery
            # delays a countdown task (a webhook retry) with RabbitMQ's native delayed
            # delivery only through a topic exchange (through a direct one the worker would
            # hold the message until its time). Publisher confirms: a submission is
            # acknowledged only once the queue's quorum has the message.
            conf.update(task_default_queue_type="quorum", task_default_exchange_type="topic",
                        task_create_missing_queue_type="quorum",
                        task_create_missing_queue_exchange_type="topic")
            conf["broker_transport_options"] = {**conf["broker_transport_options"],
                                                "confirm_publish": True}
        if conf["broker_url"].startswith("sentinel://"):
            # kombu's Sentinel transport asks these sentinels for this primary, again after
            # a failover (Flower's broker view reads the same options).
            conf["broker_transport_options"] = {
                **conf["broker_transport_options"], "master_name": self.redis_sentinel_master,
                "sentinel_kwargs": self.sentinel_kwargs()}
        return conf

    def _celery(self) -> dict:
        return {
            "broker_url": self.broker_url or (self.sentinel_broker_url() if self.redis_sentinels
                                              else self.redis_url),
            # Vigil's job store holds results; Celery's result backend would only duplicate them.
            "result_backend": None,
            "task_ignore_result": True,
            "task_serializer": "json",
            "accept_content": ["json"],
            # At-least-once: acknowledge after the task ran, redeliver if the worker died mid-task.
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            # CPU-bound tasks: take one at a time so a busy worker does not hoard messages.
            "worker_prefetch_multiplier": 1,
            # Redelivery of a dead worker's unacknowledged tasks: after visibility_timeout,
            # found by a sweep every unacked_restore_interval seconds (kombu's default sweeps
            # only every 10 s x throttle 10 = 100 s, far later than the timeout promises).
            "broker_transport_options": {
                "visibility_timeout": self.visibility_timeout_s,
                "unacked_restore_interval": max(1, min(10, self.visibility_timeout_s // 2)),
                "unacked_restore_throttle": 1,
            },
            "broker_connection_retry_on_startup": True,
            # Single events wait in an inbox in Redis (tasks.inbox); the messages that wake
            # the worker draining it go to their own queue, so a long batch job on the
            # default queue never holds them back.
            "task_routes": {"vigil.validate_events": {"queue": EVENTS_QUEUE},
                            "vigil.sweep_events": {"queue": EVENTS_QUEUE},
                            # Quick, and must not wait behind the backlog it sweeps for.
                            "vigil.sweep_jobs": {"queue": EVENTS_QUEUE},
                            "vigil.deliver_webhook": {"queue": WEBHOOKS_QUEUE},
                            "vigil.deliver_episode_webhook": {"queue": WEBHOOKS_QUEUE},
                            "vigil.send_due_webhooks": {"queue": WEBHOOKS_QUEUE}},
            "worker_send_task_events": True,
            # No task-sent events: one more broker write per submission (~1 ms of API CPU);
            # Flower still sees every task from 'received' on.
            "task_send_sent_event": False,
            "beat_schedule": {
                "retrain-models": {
                    "task": "vigil.retrain_due",
                    "schedule": self.retrain_interval_s,
                },
                "send-due-webhooks": {
                    "task": "vigil.send_due_webhooks",
                    "schedule": WEBHOOK_SWEEP_S,
                },
                "sweep-events": {
                    "task": "vigil.sweep_events",
                    "schedule": EVENTS_SWEEP_S,
                },
                "sweep-jobs": {
                    "task": "vigil.sweep_jobs",
                    "schedule": EVENTS_SWEEP_S,
                },
            },
        }
