"""Every key the running service writes for one (tenant, event type) is in that type's slot,
and every key of a tenant's jobs in the tenant's: a history import, a model, a batch job with
a flagged event and an episode, single events, feedback and settings, through the API and the
workers. Against one Redis the slots are computed (core.keys.slot); with
VIGIL_TEST_STORE=cluster the cluster is asked (CLUSTER KEYSLOT), which also checks that
computation."""

from __future__ import annotations

import numpy as np
from helpers import wait_for, wait_until
from redis.cluster import RedisCluster

from core import keys

T0 = 1_790_000_000


def slot_of(r, name: str) -> int:
    return int(r.cluster_keyslot(name)) if isinstance(r, RedisCluster) else keys.slot(name)


def test_a_types_keys_share_its_slot_and_a_tenants_job_keys_the_tenants(alpha, redis_server,
                                                                         event_type):
    rng = np.random.default_rng(5)
    history = [{"timestamp": T0 + 60 * i, "payload": {"amount": float(x)}}
               for i, x in enumerate(rng.normal(100, 10, 300))]
    imported = alpha.post(f"/v1/event-types/{event_type}/history", json={"events": history})
    assert wait_for(alpha, imported.json()["status_url"])["status"] == "succeeded"
    assert alpha.put(f"/v1/event-types/{event_type}/settings",
                     json={"min_history": 20}).status_code == 200
    events = [{"event_type": event_type, "timestamp": T0 + 60 * (400 + i),
               "payload": {"amount": x}} for i, x in enumerate([99.0, 500.0, 101.0])]
    job = wait_for(alpha, alpha.post("/v1/jobs", json={"events": events}).json()["status_url"])
    assert [r["valid"] for r in job["results"]] == [True, False, True]
    singles = [alpha.post("/v1/events/validate", json={
        "event_type": event_type, "timestamp": T0 + 60 * (500 + i), "payload": {"amount": 100.0}})
        for i in range(2)]
    for single in singles:
        assert wait_for(alpha, single.json()["status_url"])["status"] == "succeeded"
    feedback = alpha.post(f"/v1/jobs/{job['job_id']}/results/1/feedback",
                          json={"label": "false_alarm"})
    assert feedback.status_code == 200, feedback.text
    listed = {t["event_type"]: t for t in alpha.get("/v1/event-types").json()["event_types"]}
    assert listed[event_type]["events"] == 300 + 2 + 2 + 1  # imported, valid, singles, feedback

    r = redis_server.client()
    tag = keys.type_tag("alpha", event_type)
    written = [k.decode() for k in r.scan_iter(match=f"*{event_type}*", count=1000)]
    of_type = [k for k in written if tag in k]
    kinds = {k.split(tag + ":", 1)[1].split(":")[0] for k in of_type}
    # What the flows above write (the batch markers, model, feedback, episodes among them).
    assert {"baseline", "recent", "last", "history", "history-new", "model", "flagged",
            "counts", "applied", "settings", "settings-log", "feedback", "feedback-log",
            "episodes", "episode-index", "episode-state"} <= kinds, kinds
    type_slot = slot_of(r, tag)
    assert {slot_of(r, k) for k in of_type} == {type_slot}
    # Whatever else names the type is a global list of types, not the type's own state.
    assert set(written) - set(of_type) <= {keys.known_types()}
    tenant_slot = slot_of(r, keys.tenant_tag("alpha"))
    job_ids = [job["job_id"], *(s.json()["job_id"] for s in singles)]
    for job_id in job_ids:
        of_job = [k.decode() for k in r.scan_iter(match=f"*{job_id}*", count=1000)]
        assert keys.job("alpha", job_id) in of_job
        tenants = [k for k in of_job if k.startswith(f"{keys.PREFIX}:{keys.tenant_tag('alpha')}")]
        assert {slot_of(r, k) for k in tenants} == {tenant_slot}
    assert slot_of(r, keys.recent_jobs("alpha")) == tenant_slot
    assert wait_until(lambda: r.sismember(keys.tenant_types("alpha"), event_type), 5)
