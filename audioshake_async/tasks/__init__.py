"""The AudioShake Tasks API: wire rules, resources, the client, its batch provider, webhooks."""

from .client import ENV_API_KEY, ENV_BASE_URL, AudioShake
from .provider import AudioShakeProvider
from .webhooks import DeliveryOutcome, WebhookReceiver, WebhookStats

__all__ = [
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "AudioShake",
    "AudioShakeProvider",
    "DeliveryOutcome",
    "WebhookReceiver",
    "WebhookStats",
]
