# Vigil developer tasks. `make run` starts the whole stack locally; `make help` lists targets.

PYTHON ?= python3
VENV := .venv

.PHONY: help install run test test-cluster lint eval bench bench-fairness bench-servers bench-capacity bench-wait fuzz soak clean distclean

help:
	@echo "Targets:"
	@echo "  install    create $(VENV) and install requirements.txt (redone when it changes)"
	@echo "  run        start Redis (if none answers), API, worker, beat and Flower; Ctrl-C stops all"
	@echo "  test       run the test suite (then the store's integration tests on a Redis Cluster)"
	@echo "  test-cluster  only the store's integration tests, against a three-primary Redis Cluster"
	@echo "  lint       ruff check"
	@echo "  bench      throughput and latency vs two reference designs, and fair tenants, private stacks (~9 min)"
	@echo "  bench-fairness  make bench's fair-tenants phase alone: one tenant's backlog next to another's trickle (~3 min)"
	@echo "  bench-servers  the API under uWSGI, gunicorn (sync, gthread) and granian, same phases (~10 min)"
	@echo "  bench-capacity CPU per event by group, events/s per core, hosts per rate; 1 vs 2 workers (~2 min)"
	@echo "  bench-wait submit latency with and without VIGIL_REDIS_WAIT_REPLICAS=1 (primary + replica, ~30 s)"
	@echo "  fuzz       schemathesis: >=1,000 requests generated from /openapi.json; fails on any 5xx"
	@echo "  soak       10 minutes of steady load: worker memory flat, no job left unfinished"
	@echo "  eval       replay four NAB families with the defaults: windows, false alarms, NAB score, vs 3-sigma"
	@echo "  clean      remove .vigil/ and caches (keeps $(VENV))"
	@echo "  distclean  clean, and remove $(VENV)"

# The stamp makes `install` a no-op until requirements.txt changes.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install --upgrade pip -q && $(VENV)/bin/pip install -r requirements.txt -q && $(VENV)/bin/pip install -e . --no-deps -q && touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/python scripts/run.py

test: install
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
		(apt-get update -q && apt-get install -y -q chromium chromium-driver)
	@command -v promtool >/dev/null 2>&1 || \
		(apt-get update -q && apt-get install -y -q prometheus)
	@command -v haproxy >/dev/null 2>&1 || \
		(apt-get update -q && apt-get install -y -q haproxy)
	$(VENV)/bin/python -m pytest
	$(MAKE) --no-print-directory test-cluster

# The integration tests of what the store keeps, run again with a private three-primary Redis
# Cluster as the store and a plain Redis as Celery's broker (tests/conftest.py,
# docs/cluster.md): the same tests, the same assertions.
# Those whose subject is what the store keeps and how it is written. The HTTP server's, the
# CLI's, the metrics', the time-to-verdict and detection-defaults tests passed there too when
# run by hand (some two minutes more) but test the store no further; RabbitMQ's has its own.
CLUSTER_TESTS := $(addprefix tests/integration/,test_baseline_store.py test_counted_once.py \
	test_episodes.py test_eta.py test_fast_submit.py test_feedback_loop.py test_http_errors.py \
	test_inbox.py test_job_queue.py test_key_slots_written.py test_level_shift.py \
	test_retention.py test_security.py test_store_steps.py test_verdicts_flow.py test_webhooks.py)

test-cluster: install
	VIGIL_TEST_STORE=cluster $(VENV)/bin/python -m pytest $(CLUSTER_TESTS)

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf .vigil .pytest_cache .ruff_cache .schemathesis .hypothesis
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

bench: install
	$(VENV)/bin/python -m benchmarks.run_all

bench-fairness: install
	$(VENV)/bin/python -m benchmarks.fairness

bench-servers: install
	$(VENV)/bin/python -m benchmarks.servers

bench-capacity: install
	$(VENV)/bin/python -m benchmarks.capacity

bench-wait: install
	$(VENV)/bin/python -m benchmarks.wait_replicas

fuzz: install
	$(VENV)/bin/python -m pytest tests/fuzz -q -p no:logging

soak: install
	$(VENV)/bin/python -m evaluation.soak --minutes 10

eval: install
	$(VENV)/bin/python -m evaluation.nab
