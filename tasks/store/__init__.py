"""The state Vigil keeps in Redis, one module per kind; the API and the workers both use it.

- jobs: a job's record and life (create, start, progress, finish, cancel, the recent list).
- job_data: a job's events and results (and the verdicts of batches merged before a crash).
- rates: the per-tenant request windows of VIGIL_RATE_LIMIT.
- webhook_schedule: each job's webhook state, the failed deliveries and scheduled retries.
- baselines: baselines, history, flagged events and the counts per type (apply_batch).
- model_blobs: trained models and their meta.
- encoding: how stored values are written (compact JSON, timestamps).
- lua: the Lua scripts, read from lua/*.lua once.

Every function takes the Redis client first; key names come from core.keys only. Nothing is
re-exported here: import the module for the kind of state used (``from tasks.store import
jobs``), so the package imports nothing until a module is asked for.
"""
