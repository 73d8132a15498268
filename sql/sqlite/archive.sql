-- Archives: completed jobs go to completed_job, failed and cancelled ones to failed_job.
-- SQLite has no partitions, so each month of created_date is its own table pair
-- (completed_job_YYYYMM, failed_job_YYYYMM), created ahead by the runtime and dropped whole by
-- retention. {month} is always a validated YYYYMM string, never user text.

-- name: create_archive
-- One month's archive tables; registered in archive_month. ({start} and {end}, the month's
-- bounds as YYYYMMDD, are given to every dialect; partitioned ones need them.)
CREATE TABLE IF NOT EXISTS completed_job_{month} (
    id INTEGER PRIMARY KEY,
    parent_id INTEGER,
    ref_id TEXT NOT NULL,
    worker TEXT,
    tag TEXT,
    batch_id TEXT,
    callback TEXT,
    depends_on INTEGER,
    run_after TIMESTAMP,
    created_date TIMESTAMP NOT NULL,
    created_by TEXT,
    request_type TEXT NOT NULL,
    command TEXT,
    request TEXT NOT NULL,
    request_body TEXT NOT NULL,
    user_id TEXT,
    response TEXT,
    response_body TEXT,
    state TEXT NOT NULL,
    started_date TIMESTAMP,
    completed_date TIMESTAMP,
    notified_date TIMESTAMP,
    retry_limit INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    duration_ms INTEGER,
    timeout_secs REAL,
    progress REAL,
    status TEXT,
    logs TEXT,
    last_activity_date TIMESTAMP,
    reply_to TEXT,
    error_code TEXT,
    error TEXT,
    args TEXT,
    meta TEXT,
    priority INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS failed_job_{month} (
    id INTEGER PRIMARY KEY,
    parent_id INTEGER,
    ref_id TEXT NOT NULL,
    worker TEXT,
    tag TEXT,
    batch_id TEXT,
    callback TEXT,
    depends_on INTEGER,
    run_after TIMESTAMP,
    created_date TIMESTAMP NOT NULL,
    created_by TEXT,
    request_type TEXT NOT NULL,
    command TEXT,
    request TEXT NOT NULL,
    request_body TEXT NOT NULL,
    user_id TEXT,
    response TEXT,
    response_body TEXT,
    state TEXT NOT NULL,
    started_date TIMESTAMP,
    completed_date TIMESTAMP,
    notified_date TIMESTAMP,
    retry_limit INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    duration_ms INTEGER,
    timeout_secs REAL,
    progress REAL,
    status TEXT,
    logs TEXT,
    last_activity_date TIMESTAMP,
    reply_to TEXT,
    error_code TEXT,
    error TEXT,
    args TEXT,
    meta TEXT,
    priority INTEGER NOT NULL
);
INSERT OR IGNORE INTO archive_month (month) VALUES ('{month}');

-- name: archive_months
SELECT month FROM archive_month ORDER BY month;

-- name: archive_completed
-- Copy finished jobs of one month into its archive; the caller deletes them in the same transaction.
INSERT INTO completed_job_{month} (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, response, response_body,
    state, started_date, completed_date, notified_date, retry_limit, attempts, duration_ms,
    timeout_secs, progress, status, logs, last_activity_date, reply_to, error_code, error, args,
    meta, priority
)
SELECT
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, response, response_body,
    state, started_date, completed_date, notified_date, retry_limit, attempts, duration_ms,
    timeout_secs, progress, status, logs, last_activity_date, reply_to, error_code, error, args,
    meta, priority
FROM background_job
WHERE id IN (SELECT value FROM json_each(:ids)) AND state = 'Completed';

-- name: archive_failed
INSERT INTO failed_job_{month} (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, response, response_body,
    state, started_date, completed_date, notified_date, retry_limit, attempts, duration_ms,
    timeout_secs, progress, status, logs, last_activity_date, reply_to, error_code, error, args,
    meta, priority
)
SELECT
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, response, response_body,
    state, started_date, completed_date, notified_date, retry_limit, attempts, duration_ms,
    timeout_secs, progress, status, logs, last_activity_date, reply_to, error_code, error, args,
    meta, priority
FROM background_job
WHERE id IN (SELECT value FROM json_each(:ids)) AND state IN ('Failed', 'Cancelled');

-- name: delete_archived
-- Remove archived jobs from the queue (same transaction as the archive insert).
DELETE FROM background_job
WHERE id IN (SELECT value FROM json_each(:ids)) AND state IN ('Completed', 'Failed', 'Cancelled');

-- name: get_completed_job
SELECT * FROM completed_job_{month} WHERE id = :id AND created_date = :created_date;

-- name: get_failed_job
SELECT * FROM failed_job_{month} WHERE id = :id AND created_date = :created_date;

-- name: requeue_failed
-- Bring a failed or cancelled job back into the queue with the same id and a fresh retry budget.
INSERT INTO background_job (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, response, response_body,
    state, started_date, completed_date, notified_date, retry_limit, attempts, duration_ms,
    timeout_secs, progress, status, logs, last_activity_date, reply_to, error_code, error, args,
    meta, priority
)
SELECT
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, NULL, created_date,
    created_by, request_type, command, request, request_body, user_id, NULL, NULL, 'Queued',
    NULL, NULL, NULL, retry_limit, 0, NULL, timeout_secs, NULL, NULL, logs, :now, reply_to,
    error_code, error, args, meta, priority
FROM failed_job_{month} WHERE id = :id;

-- name: delete_failed
DELETE FROM failed_job_{month} WHERE id = :id;

-- name: drop_archive
-- Retention: a month goes as a unit.
DROP TABLE IF EXISTS completed_job_{month};
DROP TABLE IF EXISTS failed_job_{month};
DELETE FROM archive_month WHERE month = '{month}';

-- name: delete_old_summaries
-- Retention: summaries of finished jobs created before the oldest kept month.
DELETE FROM job_summary
WHERE created_date < :before AND state IN ('Completed', 'Failed', 'Cancelled');
