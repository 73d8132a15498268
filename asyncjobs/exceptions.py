"""The one exception hierarchy of asyncjobs.

::

    AsyncJobsError
    ├── ConfigurationError (ValueError)        bad constructor settings or options
    │   ├── InvalidDsnError                    unparseable DSN or unknown scheme
    │   ├── MissingDriverError (ImportError)   the driver's pip extra is not installed
    │   └── InvalidOptionsError                a JobOptions value that cannot work
    ├── CronFormatError (ValueError)           an invalid cron expression
    ├── RegistrationError (LookupError)        unknown command, API or request type
    ├── SerializationError (ValueError)        a request or result that is not JSON-able
    ├── DuplicateRefIdError                    ref_id already used by another job
    ├── JobNotFoundError (LookupError)         no job with that id
    ├── InvalidJobStateError                   the job is not in a state the action needs
    ├── JobFailedError                         a transient job's command raised (chained)
    ├── JobCancelledError                      the job was cancelled
    ├── ReplyToError (ValueError)              a malformed ReplyTo URL
    ├── NoCurrentJobError (LookupError)        current_job() outside a job
    └── DatabaseError                          a driver error the store could not handle
"""

from __future__ import annotations


class AsyncJobsError(Exception):
    """Root of every error asyncjobs raises on purpose."""


class ConfigurationError(AsyncJobsError, ValueError):
    """A constructor setting or option that cannot work."""


class InvalidDsnError(ConfigurationError):
    """The DSN cannot be parsed or names an unknown scheme."""


class MissingDriverError(AsyncJobsError, ImportError):
    """The database driver for a DSN is not installed; the message names the pip extra."""


class InvalidOptionsError(ConfigurationError):
    """A `JobOptions` value is invalid (negative retry limit, naive datetime, ...)."""


class CronFormatError(AsyncJobsError, ValueError):
    """A cron expression is invalid; the message names the field and the bad text."""


class RegistrationError(AsyncJobsError, LookupError):
    """A command, API handler or request type is not registered (or registered twice)."""


class SerializationError(AsyncJobsError, ValueError):
    """A request or result cannot be stored as JSON, or loaded back into its type."""


class StatementTooLargeError(SerializationError):
    """A request, result or batch too large for one statement to the database (MySQL's
    ``max_allowed_packet``): refused before it is sent."""


class DuplicateRefIdError(AsyncJobsError, ValueError):
    """Another job already uses this `ref_id`."""


class JobNotFoundError(AsyncJobsError, LookupError):
    """No job with that id (or ref id) exists."""


class InvalidJobStateError(AsyncJobsError):
    """The job is not in a state the requested action applies to."""


class JobFailedError(AsyncJobsError):
    """A job's command raised; the original exception is the ``__cause__``."""


class JobCancelledError(AsyncJobsError):
    """The job was cancelled before it finished."""


class ReplyToError(AsyncJobsError, ValueError):
    """A ReplyTo URL is malformed or names an environment variable that is not allowed."""


class DatabaseError(AsyncJobsError):
    """A database error the store could not recover from."""


class DatabaseBusyError(DatabaseError):
    """The database stayed locked by another connection for the whole busy timeout (SQLite,
    which has one writer at a time): nothing was written; the call may be made again."""


class NoCurrentJobError(AsyncJobsError, LookupError):
    """``current_job()`` or ``job_logger()`` was called outside a running job."""
