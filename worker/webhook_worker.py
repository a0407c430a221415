"""The webhook worker's entry module: `celery -A worker.webhook_worker worker --pool threads`.

The same Celery app as worker.app, consuming the webhook queue (QUEUE + ".webhooks") and no
other: deliveries are short waits on the network, so a few threads of one process send many
at once, and none waits behind a training run (a training worker holds one run at a time,
for up to RUN_TIME_LIMIT_SECONDS). beat sends it the dispatcher, too.
"""

from __future__ import annotations

from kombu import Exchange, Queue

from service.queue import webhook_queue
from worker.app import celery, flask_app

# Declared as Celery declares a queue that a message is sent to by name (send_delivery):
# its own direct exchange, its name as the routing key.
_name = webhook_queue(flask_app.config)
celery.conf.task_queues = [Queue(_name, Exchange(_name, type="direct"), routing_key=_name)]
# No remote control (nothing here sends it commands: health is the heartbeat file). Its
# broadcast consumer, beside the threads pool, made a Redis restart kill this worker: kombu
# closed the channel with unacked deliveries on a connection already torn down
# (AttributeError: 'NoneType' object has no attribute 'hostname' in restore_unacked).
celery.conf.worker_enable_remote_control = False
