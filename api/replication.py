"""VIGIL_REDIS_WAIT_REPLICAS: a submission is answered 202 only once replicas have it.

Redis replicates asynchronously: a primary that dies right after answering loses the writes
its replicas had not received yet, and a failover (Sentinel) promotes a replica without them.
Redis's remedy is WAIT: the command returns once that many replicas acknowledged everything
the primary had when this connection last wrote, or when its timeout ends.

WAIT counts from the last write made *on the connection it is sent on*, and redis-py's pool
may hand a request's commands different connections; a retry that found its job already
stored wrote nothing at all. So the WAIT goes in one pipeline after a write of its own (the
tenant's replication fence), sent after the job was stored and its messages published: the
replicas that acknowledge the fence have every earlier write of the primary, the job's and,
where the broker is the same Redis, its Celery message too.
"""

from __future__ import annotations

from api.services import Services
from core import keys


class NotReplicated(Exception):
    """Fewer replicas than VIGIL_REDIS_WAIT_REPLICAS acknowledged the job in time. It is
    stored (and queued) on the primary all the same."""

    def __init__(self, tenant: str, job_id: str, acknowledged: int, wanted: int,
                 timeout_ms: int) -> None:
        super().__init__(f"{acknowledged} of {wanted} replicas acknowledged job {job_id} "
                         f"within {timeout_ms} ms")
        self.tenant = tenant
        self.job_id = job_id
        self.acknowledged = acknowledged
        self.wanted = wanted
        self.timeout_ms = timeout_ms


def confirm(svc: Services, tenant: str, job_id: str) -> None:
    """Return once VIGIL_REDIS_WAIT_REPLICAS replicas have what the primary has now (at once
    when the option is off); raise NotReplicated if they do not within its timeout."""
    wanted = svc.settings.redis_wait_replicas
    if not wanted:
        return
    timeout_ms = svc.settings.redis_wait_timeout_ms
    pipe = svc.redis.pipeline(transaction=False)
    pipe.set(keys.replication_fence(tenant), job_id)
    pipe.wait(wanted, timeout_ms)
    acknowledged = int(pipe.execute()[1])
    if acknowledged < wanted:
        raise NotReplicated(tenant, job_id, acknowledged, wanted, timeout_ms)
