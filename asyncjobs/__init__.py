"""asyncjobs: durable background jobs and scheduled tasks for async Python, kept in the
application's own relational database."""

from .commands import (
    AsyncCommand,
    AsyncCommandWithResult,
    AsyncNoRequestCommand,
    AsyncNoRequestCommandWithResult,
    SyncCommand,
    SyncCommandWithResult,
    SyncNoRequestCommand,
    SyncNoRequestCommandWithResult,
)
from .context import cancellation_requested, current_job, job_logger, update_status
from .cron import CronExpression
from .exceptions import (
    AsyncJobsError,
    ConfigurationError,
    CronFormatError,
    DatabaseBusyError,
    DatabaseError,
    DuplicateRefIdError,
    InvalidDsnError,
    InvalidJobStateError,
    InvalidOptionsError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    MissingDriverError,
    NoCurrentJobError,
    RegistrationError,
    ReplyToError,
    SerializationError,
    StatementTooLargeError,
)
from .models import BackgroundJob, JobOptions, JobRef, JobResult, JobState, JobSummary
from .replyto import send_json_callback
from .runtime import BackgroundJobs
from .schedule import Schedule

__all__ = [
    "AsyncCommand",
    "AsyncCommandWithResult",
    "AsyncJobsError",
    "AsyncNoRequestCommand",
    "AsyncNoRequestCommandWithResult",
    "BackgroundJob",
    "BackgroundJobs",
    "ConfigurationError",
    "CronExpression",
    "CronFormatError",
    "DatabaseBusyError",
    "DatabaseError",
    "DuplicateRefIdError",
    "InvalidDsnError",
    "InvalidJobStateError",
    "InvalidOptionsError",
    "JobCancelledError",
    "JobFailedError",
    "JobNotFoundError",
    "JobOptions",
    "JobRef",
    "JobResult",
    "JobState",
    "JobSummary",
    "MissingDriverError",
    "NoCurrentJobError",
    "RegistrationError",
    "ReplyToError",
    "Schedule",
    "SerializationError",
    "StatementTooLargeError",
    "SyncCommand",
    "SyncCommandWithResult",
    "SyncNoRequestCommand",
    "SyncNoRequestCommandWithResult",
    "cancellation_requested",
    "current_job",
    "job_logger",
    "send_json_callback",
    "update_status",
]
