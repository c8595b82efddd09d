"""Legacy Jobs API requests to Tasks API requests; lives in :mod:`audioshake_async.legacy`.

This module keeps the documented path ``audioshake_async.migrate.migrate_jobs``.
"""

from .legacy.migrate import MigrationNote, MigrationResult, TaskRequest, migrate_jobs

__all__ = ["MigrationNote", "MigrationResult", "TaskRequest", "migrate_jobs"]
