# One image for every role (api, worker, beat, flower); docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Requirements first so code changes do not invalidate the dependency layer.
# Every pinned dependency ships a manylinux wheel: no compiler needed.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
# The `vigil` command-line tool, for `docker compose exec api vigil ...`.
RUN pip install --no-cache-dir --no-deps .

# Run unprivileged; the app writes nothing under /app at runtime.
RUN useradd --create-home --uid 10001 vigil
USER vigil

EXPOSE 8000

# The API: core/server.py's command for uWSGI (tests/unit/test_server_command.py checks they agree).
CMD ["uwsgi", "--ini", "uwsgi.ini", "--http-socket", "0.0.0.0:8000", "--module", "api.wsgi:app"]
