"""Settings.from_env: defaults, API keys as digests, and what production refuses."""

import pytest

from core.config import (
    DEV_API_KEY,
    DEV_TENANT,
    DEV_WEBHOOK_SECRET,
    Z_SHARE,
    ConfigError,
    Settings,
    key_digest,
)

PROD = {"VIGIL_ENV": "production", "VIGIL_API_KEYS": "acme:k-acme",
        "VIGIL_WEBHOOK_SECRET": "whsec_cHJvZC1zZWNyZXQ="}


def test_defaults():
    s = Settings.from_env({})
    assert s.env == "development" and s.redis_url == "redis://127.0.0.1:6379/0"
    assert dict(s.api_keys) == {key_digest(DEV_API_KEY): DEV_TENANT} and s.using_dev_key
    assert s.webhook_secret == DEV_WEBHOOK_SECRET
    assert (s.z_threshold, s.min_history, s.model_min_rows) == (None, 30, 50)
    assert s.visibility_timeout_s == 3600
    assert Settings.from_env({"VIGIL_Z_THRESHOLD": "  "}).z_threshold is None  # blank = unset


def test_api_keys_map_digests_to_tenants():
    s = Settings.from_env({"VIGIL_API_KEYS": " a:k1 , b:k2 ,"})
    assert dict(s.api_keys) == {key_digest("k1"): "a", key_digest("k2"): "b"}
    assert "k1" not in s.api_keys and not s.using_dev_key
    # Only the first ':' separates: the key may contain ':', a tenant name never does.
    assert dict(Settings.from_env({"VIGIL_API_KEYS": "a:b:k"}).api_keys) == {key_digest("b:k"): "a"}


@pytest.mark.parametrize("raw", ["a", "a:", ":k1", "a:k1,b", "my tenant:k1", "a/b:k1",
                                 "x" * 65 + ":k1"])
def test_malformed_api_keys_are_refused(raw):
    with pytest.raises(ConfigError, match="VIGIL_API_KEYS"):
        Settings.from_env({"VIGIL_API_KEYS": raw})


def test_malformed_entry_error_does_not_echo_the_key():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"VIGIL_API_KEYS": "sk_live_0123456789"})
    assert "sk_live_0123456789" not in str(caught.value)


@pytest.mark.parametrize("raw, first, second", [
    ("alice:sk_shared_0123,bob:sk_shared_0123", "#1 (tenant 'alice')", "#2 (tenant 'bob')"),
    # The same tenant twice, and spaces around the key: still the same key.
    ("alice:sk_shared_0123,carol:k-c, alice: sk_shared_0123 ", "#1 (tenant 'alice')",
     "#3 (tenant 'alice')"),
])
def test_a_key_given_twice_is_refused_without_echoing_it(raw, first, second):
    # Before: the later entry silently took the key over, and alice's key signed in as bob.
    with pytest.raises(ConfigError, match="VIGIL_API_KEYS") as caught:
        Settings.from_env({"VIGIL_API_KEYS": raw})
    message = str(caught.value)
    assert first in message and second in message and "same key" in message
    assert "sk_shared" not in message and key_digest("sk_shared_0123") not in message


def test_production_requires_api_keys():
    env = {k: v for k, v in PROD.items() if k != "VIGIL_API_KEYS"}
    with pytest.raises(ConfigError, match="VIGIL_API_KEYS"):
        Settings.from_env(env)
    with pytest.raises(ConfigError, match="VIGIL_API_KEYS"):  # the dev key, named explicitly
        Settings.from_env({**PROD, "VIGIL_API_KEYS": f"acme:k,dev:{DEV_API_KEY}"})


def test_production_requires_a_webhook_secret_where_it_signs():
    env = {k: v for k, v in PROD.items() if k != "VIGIL_WEBHOOK_SECRET"}
    with pytest.raises(ConfigError, match="VIGIL_WEBHOOK_SECRET"):
        Settings.from_env(env)
    # With several tenants each signs with its own secret: the env one signs for nobody.
    several = Settings.from_env({**env, "VIGIL_API_KEYS": "acme:k-acme,zeta:k-zeta"})
    assert not several.single_tenant


def test_production_with_keys_and_secret_works():
    s = Settings.from_env(PROD)
    assert s.env == "production" and dict(s.api_keys) == {key_digest("k-acme"): "acme"}
    assert s.webhook_secret == PROD["VIGIL_WEBHOOK_SECRET"]


@pytest.mark.parametrize("name, raw", [("VIGIL_Z_THRESHOLD", "three"), ("VIGIL_MIN_HISTORY", "2.5"),
                                       ("VIGIL_VISIBILITY_TIMEOUT", "1h")])
def test_non_numeric_setting_names_the_variable(name, raw):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: raw})


@pytest.mark.parametrize("env", [{"VIGIL_ENV": "prod"}, {"VIGIL_Z_THRESHOLD": "0"},
                                 {"VIGIL_MIN_HISTORY": "1"}, {"VIGIL_ANOMALY_CONTAMINATION": "0.5"},
                                 {"VIGIL_WORKER_NICE": "20"}, {"VIGIL_WORKER_NICE": "-1"}])
def test_meaningless_settings_are_refused(env):
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_alert_budget_is_split_between_the_z_rule_and_the_model():
    s = Settings.from_env({})
    assert s.alert_rate == 0.001 and s.anomaly_contamination is None
    assert s.z_rate == pytest.approx(Z_SHARE * 0.001)
    assert s.model_contamination == pytest.approx((1 - Z_SHARE) * 0.001)
    tuned = Settings.from_env({"VIGIL_ALERT_RATE": "0.01", "VIGIL_ANOMALY_CONTAMINATION": "0.02",
                               "VIGIL_Z_THRESHOLD": "4.5"})
    assert (tuned.alert_rate, tuned.model_contamination, tuned.z_threshold) == (0.01, 0.02, 4.5)


@pytest.mark.parametrize("raw", ["0", "0.5", "-0.1", "nan", "1"])
def test_alert_rate_out_of_range_is_refused_by_name(raw):
    with pytest.raises(ConfigError, match=r"VIGIL_ALERT_RATE must be in \(0, 0.5\)"):
        Settings.from_env({"VIGIL_ALERT_RATE": raw})


def test_nan_z_threshold_is_refused():
    with pytest.raises(ConfigError, match="VIGIL_Z_THRESHOLD"):
        Settings.from_env({"VIGIL_Z_THRESHOLD": "nan"})


def test_celery_is_at_least_once_with_the_configured_visibility_timeout():
    conf = Settings.from_env({"VIGIL_VISIBILITY_TIMEOUT": "1234"}).celery()
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] == 1234


def test_webhook_schedule_and_rotating_secrets():
    s = Settings.from_env({"VIGIL_WEBHOOK_SCHEDULE": "1, 2.5,10",
                           "VIGIL_WEBHOOK_SECRET": "whsec_bmV3 whsec_b2xk"})
    assert s.webhook_schedule_s == (1.0, 2.5, 10.0)
    assert s.webhook_secrets == ("whsec_bmV3", "whsec_b2xk")
    assert Settings().webhook_schedule_s == (5, 300, 1800, 7200, 18000, 36000, 36000)
    for bad in ("", "x", "-1", "nan"):
        if bad:
            with pytest.raises(ConfigError, match="VIGIL_WEBHOOK_SCHEDULE"):
                Settings.from_env({"VIGIL_WEBHOOK_SCHEDULE": bad})


def test_quorum_queues_need_rabbitmq_and_round_countdowns_to_whole_seconds():
    amqp = {"VIGIL_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"}
    quorum = Settings.from_env({**amqp, "VIGIL_BROKER_QUEUE_TYPE": "quorum"})
    conf = quorum.celery()
    assert conf["task_default_queue_type"] == conf["task_create_missing_queue_type"] == "quorum"
    assert conf["task_default_exchange_type"] == "topic"
    assert conf["broker_transport_options"]["confirm_publish"] is True
    assert [quorum.broker_countdown(d) for d in (0.2, 1.0, 4.1)] == [1.0, 1.0, 5.0]
    classic = Settings.from_env(amqp)
    assert classic.broker_countdown(0.2) == 0.2 and "task_default_queue_type" not in classic.celery()
    with pytest.raises(ConfigError, match="needs RabbitMQ"):
        Settings.from_env({"VIGIL_BROKER_QUEUE_TYPE": "quorum"})
    with pytest.raises(ConfigError, match="'classic' or 'quorum'"):
        Settings.from_env({**amqp, "VIGIL_BROKER_QUEUE_TYPE": "mirrored"})


def test_the_store_is_reached_at_its_own_url_and_may_be_a_cluster():
    plain = Settings.from_env({"REDIS_URL": "redis://broker:6379/0"})
    assert plain.store_redis_url == "redis://broker:6379/0" and not plain.store_cluster
    cluster = Settings.from_env({"REDIS_URL": "redis://broker:6379/0",
                                 "VIGIL_STORE_URL": "redis://node-1:7000/0",
                                 "VIGIL_STORE_CLUSTER": "true"})
    assert cluster.store_redis_url == "redis://node-1:7000/0" and cluster.store_cluster
    assert cluster.celery()["broker_url"] == "redis://broker:6379/0"


@pytest.mark.parametrize("env", [
    {"REDIS_URL": "redis://node-1:7000/0", "VIGIL_STORE_CLUSTER": "true"},
    {"REDIS_URL": "redis://a:6379/0", "VIGIL_BROKER_URL": "redis://node-1:7000/0",
     "VIGIL_STORE_URL": "redis://node-1:7000/0", "VIGIL_STORE_CLUSTER": "true"},
])
def test_a_cluster_store_refuses_to_be_the_broker_too(env):
    with pytest.raises(ConfigError, match="broker cannot be a Redis Cluster"):
        Settings.from_env(env)


def test_store_cluster_flag_must_be_a_boolean():
    with pytest.raises(ConfigError, match="VIGIL_STORE_CLUSTER"):
        Settings.from_env({"VIGIL_STORE_CLUSTER": "maybe"})


SENTINELS = {"VIGIL_REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2:26380,[::1]:26381",
             "VIGIL_REDIS_SENTINEL_MASTER": "mymaster"}


def test_sentinels_make_the_broker_kombus_sentinel_transport_with_the_urls_credentials():
    s = Settings.from_env({**SENTINELS, "REDIS_URL": "redis://:p@ss@unused:1/3",
                           "VIGIL_REDIS_SENTINEL_PASSWORD": "s3cret"})
    assert s.redis_sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26381))
    conf = s.celery()
    # One sentinel:// per sentinel, ';'-joined; REDIS_URL's password (quoted) and database.
    assert conf["broker_url"] == ("sentinel://:p%40ss@10.0.0.1:26379/3;"
                                  "sentinel://:p%40ss@10.0.0.2:26380/3;"
                                  "sentinel://:p%40ss@[::1]:26381/3")
    options = conf["broker_transport_options"]
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"]["password"] == "s3cret"
    assert options["visibility_timeout"] == 3600  # the usual options stay
    assert s.broker_in_store


def test_rabbitmq_stays_the_broker_with_sentinels_for_the_store():
    s = Settings.from_env({**SENTINELS, "VIGIL_BROKER_URL": "amqp://u:p@h:5672//"})
    assert s.celery()["broker_url"] == "amqp://u:p@h:5672//"
    assert "master_name" not in s.celery()["broker_transport_options"]
    assert not s.broker_in_store


@pytest.mark.parametrize("env, message", [
    ({"VIGIL_REDIS_SENTINELS": "h:26379"}, "needs VIGIL_REDIS_SENTINEL_MASTER"),
    ({"VIGIL_REDIS_SENTINEL_MASTER": "mymaster"}, "nothing uses Sentinel"),
    ({"VIGIL_BROKER_URL": "sentinel://h:26379"}, "needs VIGIL_REDIS_SENTINEL_MASTER"),
    ({"VIGIL_REDIS_SENTINEL_PASSWORD": "x"}, "no sentinels are"),
    ({**SENTINELS, "VIGIL_REDIS_SENTINEL_MASTER": "my master"}, "1-64 characters"),
    ({"VIGIL_REDIS_SENTINELS": "h", "VIGIL_REDIS_SENTINEL_MASTER": "m"},
     "VIGIL_REDIS_SENTINELS='h' is not a valid list of sentinels"),
    ({"VIGIL_REDIS_SENTINELS": "h:0", "VIGIL_REDIS_SENTINEL_MASTER": "m"}, "host:port"),
    ({"VIGIL_REDIS_SENTINELS": ":26379", "VIGIL_REDIS_SENTINEL_MASTER": "m"}, "host:port"),
    ({"VIGIL_REDIS_WAIT_REPLICAS": "-1"}, "VIGIL_REDIS_WAIT_REPLICAS must be 0"),
    ({"VIGIL_REDIS_WAIT_TIMEOUT_MS": "0"}, "between 1 and 4000"),
    ({"VIGIL_REDIS_WAIT_TIMEOUT_MS": "5000"}, "between 1 and 4000"),
])
def test_sentinel_and_wait_settings_are_checked(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_wait_for_replicas_is_off_by_default():
    s = Settings.from_env({})
    assert (s.redis_wait_replicas, s.redis_wait_timeout_ms) == (0, 500)
    assert Settings.from_env({"VIGIL_REDIS_WAIT_REPLICAS": "1"}).redis_wait_replicas == 1


def test_tenant_weights_default_to_one_and_are_read_per_tenant():
    keys = {"VIGIL_API_KEYS": "acme:k1,small:k2,other:k3"}
    assert Settings.from_env(keys).weight("acme") == 1.0
    s = Settings.from_env({**keys, "VIGIL_TENANT_WEIGHTS": " acme:3 , small:0.5 ,"})
    assert dict(s.tenant_weights) == {"acme": 3.0, "small": 0.5}
    assert (s.weight("acme"), s.weight("small"), s.weight("other")) == (3.0, 0.5, 1.0)


@pytest.mark.parametrize("raw, says", [
    ("acme", "entry #1 ('acme') is not 'tenant:weight'"),
    ("acme:3,small", "entry #2 ('small') is not 'tenant:weight'"),
    ("acme:", "is not 'tenant:weight'"),
    ("acme:0", "weight of 'acme' is '0': it must be a number above 0 and at most 1000"),
    ("acme:-2", "weight of 'acme' is '-2'"),
    ("acme:lots", "weight of 'acme' is 'lots'"),
    ("acme:nan", "weight of 'acme' is 'nan'"),
    ("acme:1001", "weight of 'acme' is '1001'"),
    ("acme:2,acme:3", "gives tenant 'acme' a weight twice"),
    ("ac me:2", "tenant 'ac me' must match"),
    ("acmee:2", "names 'acmee', which has no API key in VIGIL_API_KEYS"),
])
def test_bad_tenant_weights_are_refused_with_what_is_wrong(raw, says):
    with pytest.raises(ConfigError, match="^VIGIL_TENANT_WEIGHTS") as refused:
        Settings.from_env({"VIGIL_API_KEYS": "acme:k1,small:k2", "VIGIL_TENANT_WEIGHTS": raw})
    assert says in str(refused.value)


def test_waiting_for_replicas_is_refused_with_a_cluster_store():
    with pytest.raises(ConfigError, match="VIGIL_REDIS_WAIT_REPLICAS is not supported"):
        Settings.from_env({"REDIS_URL": "redis://broker:6379/0", "VIGIL_STORE_CLUSTER": "true",
                           "VIGIL_STORE_URL": "redis://node-1:7000/0",
                           "VIGIL_REDIS_WAIT_REPLICAS": "1"})
