"""Webhook deliveries of the Tasks API; the receiver lives in :mod:`audioshake_async.tasks`.

This module keeps the documented import path ``audioshake_async.webhooks.WebhookReceiver``.
"""

from .tasks.webhooks import DeliveryListener, DeliveryOutcome, WebhookReceiver, WebhookStats

__all__ = ["DeliveryListener", "DeliveryOutcome", "WebhookReceiver", "WebhookStats"]
