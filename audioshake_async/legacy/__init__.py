"""Deprecated: AudioShake's legacy Jobs API (``groovy``) and its batch-engine provider.

AudioShake is migrating every customer to the Tasks API (:class:`audioshake_async.AudioShake`);
this module lets holders of a legacy token keep working while they move over (see
:mod:`audioshake_async.legacy.migrate`, ``audioshake-async migrate`` and the README section
"Migrating from the Jobs API").

Differences from the Tasks API, all handled here:

- host ``https://groovy.audioshake.ai`` and ``Authorization: Bearer <token>`` (a JWT from
  support), sent by the shared :class:`~audioshake_async.core.transport.Transport`, so only to the
  API's origin and never in a repr, a log line or an exception;
- one job = one model x one format x one asset; responses are wrapped in ``{"job": {...}}``;
- statuses ``created``/``queued``/``processing`` then ``completed``, or ``failed``/``error``;
- right after ``POST /job``, ``GET /job/{id}`` may answer 404 for a moment (seen by real
  clients), so a few 404s are tolerated before a job is declared missing;
- shapes vary across doc generations: outputs in ``outputAssets``, ``stemAssets``, or nested
  under ``sourceAsset``; ``metadata`` or ``stemMetadata``. Parsing accepts all of them.

:class:`LegacyProvider` runs the batch engine on this API: the jobs of one input (one per model
and format) appear to the engine as the targets of ONE composite task whose id is
``"legacy:" + "+".join(job ids)``.
"""

from .client import LegacyClient
from .composite import composite_task, split_task_id, target_status
from .migrate import MigrationNote, MigrationResult, TaskRequest, migrate_jobs
from .models import (
    DEFAULT_LEGACY_BASE_URL,
    ENV_LEGACY_BASE_URL,
    ENV_LEGACY_TOKEN,
    LEGACY_MODELS,
    MIGRATION_GUIDE_URL,
    Job,
    LegacyAsset,
    LegacyUsage,
    LegacyUsageMonth,
    OutputAsset,
    StatusInfo,
    check_legacy_targets,
)
from .provider import LegacyProvider
from .wire import parse_job

__all__ = [
    "DEFAULT_LEGACY_BASE_URL",
    "ENV_LEGACY_BASE_URL",
    "ENV_LEGACY_TOKEN",
    "LEGACY_MODELS",
    "MIGRATION_GUIDE_URL",
    "Job",
    "LegacyAsset",
    "LegacyClient",
    "LegacyProvider",
    "LegacyUsage",
    "LegacyUsageMonth",
    "MigrationNote",
    "MigrationResult",
    "OutputAsset",
    "StatusInfo",
    "TaskRequest",
    "check_legacy_targets",
    "composite_task",
    "migrate_jobs",
    "parse_job",
    "split_task_id",
    "target_status",
]
