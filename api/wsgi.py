"""The WSGI application uWSGI serves (uwsgi.ini), built once in each worker process."""

from api import create_app
from core.gctuning import tune_gc

app = create_app()
# After start-up, in the process that serves (uwsgi.ini has lazy-apps: after the fork).
tune_gc()
