"""The Celery app that `celery -A tasks.worker worker|beat|flower` loads."""

from core.config import Settings
from tasks import create_celery

app = create_celery(Settings.from_env())
app.set_default()
