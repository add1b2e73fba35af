"""AMQP ingress: each message on a queue starts exactly one workflow run.

Per message: ``check_message`` (pure: content type, size, JSON object, workflow, input schema)
decides; a good message becomes ``engine.start(wf, body, run_id=<derived from the message
id>)`` and is acked only after ``start`` returned, so the run is durably stored before the
broker forgets the message. A redelivered or duplicated message finds its run and starts
nothing. A bad message is republished to the dead-letter queue with the reason in its headers
(``x-flux-error``, ``x-flux-error-code``), with publisher confirms, and only then acked.
Broker and database outages are waited out with backoff; nothing is acked that is not done.

Topology for queue ``Q`` (declared by the consumer and by every publisher, so that a message
published before the consumer first ran is kept): direct exchange ``Q`` → queue ``Q``
(``x-dead-letter-exchange: Q.dlx``) and exchange ``Q.dlx`` → queue ``Q.dlq``.

Run it with ``fluxcelery consume --queue orders.workflow --workflow order-fulfillment``
(or ``python -m fluxcelery.ingress ...``; the command lives in cli/consume.py).
"""

from .consumer import ConsumeStats, IngressConfigError, IngressConsumer, consume
from .messages import (
    DEFAULT_QUEUE,
    DEFAULT_WORKFLOW,
    MAX_MESSAGE_BYTES,
    WORKFLOW_HEADER,
    Accepted,
    Rejected,
    Topology,
    check_message,
    dead_letter_headers,
    derive_run_id,
    is_json_content_type,
    is_transient,
)
from .publisher import Publisher, replay_dead_letters

__all__ = [
    "DEFAULT_QUEUE",
    "DEFAULT_WORKFLOW",
    "MAX_MESSAGE_BYTES",
    "WORKFLOW_HEADER",
    "Accepted",
    "ConsumeStats",
    "IngressConfigError",
    "IngressConsumer",
    "Publisher",
    "Rejected",
    "Topology",
    "check_message",
    "consume",
    "dead_letter_headers",
    "derive_run_id",
    "is_json_content_type",
    "is_transient",
    "replay_dead_letters",
]
