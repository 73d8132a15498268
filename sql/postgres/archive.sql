-- Archives: completed jobs go to completed_job, failed and cancelled ones to failed_job.
-- Differs from SQLite: each is one table PARTITION BY RANGE (created_date) with a partition per
-- month (completed_job_YYYYMM) and a DEFAULT partition (see migration_1). Queries name the
-- parent table and PostgreSQL routes rows and prunes partitions. {month} is always a validated
-- YYYYMM string, {start} and {end} YYYYMMDD strings, never user text.

-- name: create_archive
-- One month's partitions, created ahead by the runtime (start-up and hourly, never while
-- archiving); a no-op when they exist. See ensure_archive_partition in migration_1.
SELECT ensure_archive_partition('completed_job', '{month}', '{start}'::date, '{end}'::date),
       ensure_archive_partition('failed_job', '{month}', '{start}'::date, '{end}'::date);

-- name: archive_months
-- Months that have archived jobs: a partition, or rows waiting in a DEFAULT partition.
SELECT DISTINCT month FROM (
    SELECT right(c.relname, 6) AS month
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent IN ('completed_job'::regclass, 'failed_job'::regclass)
      AND c.relname ~ '_job_[0-9]{6}$'
    UNION ALL
    SELECT to_char(created_date AT TIME ZONE 'UTC', 'YYYYMM') FROM completed_job_default
    UNION ALL
    SELECT to_char(created_date AT TIME ZONE 'UTC', 'YYYYMM') FROM failed_job_default
) m
ORDER BY month;

-- name: archive_completed
-- Copy finished jobs into the archive; the caller deletes them in the same transaction.
INSERT INTO completed_job (
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
WHERE id = ANY (ARRAY(SELECT jsonb_array_elements_text(:ids::jsonb)::bigint))
  AND state = 'Completed';

-- name: archive_failed
INSERT INTO failed_job (
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
WHERE id = ANY (ARRAY(SELECT jsonb_array_elements_text(:ids::jsonb)::bigint))
  AND state IN ('Failed', 'Cancelled');

-- name: delete_archived
-- Remove archived jobs from the queue (same transaction as the archive insert).
DELETE FROM background_job
WHERE id = ANY (ARRAY(SELECT jsonb_array_elements_text(:ids::jsonb)::bigint))
  AND state IN ('Completed', 'Failed', 'Cancelled');

-- name: get_completed_job
-- Differs from SQLite: filtering on created_date (the partition key) prunes to one partition.
SELECT * FROM completed_job WHERE id = :id AND created_date = :created_date;

-- name: get_failed_job
SELECT * FROM failed_job WHERE id = :id AND created_date = :created_date;

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
FROM failed_job WHERE id = :id;

-- name: delete_failed
DELETE FROM failed_job WHERE id = :id;

-- name: drop_archive
-- Retention: a month goes as a unit. DROP TABLE on a partition detaches it and drops it in one
-- step (DETACH ... CONCURRENTLY cannot run inside the store's transaction); rows of that month
-- that waited in a DEFAULT partition go too.
DROP TABLE IF EXISTS completed_job_{month};
DROP TABLE IF EXISTS failed_job_{month};
DELETE FROM completed_job_default
WHERE created_date >= to_date('{month}', 'YYYYMM')::timestamp AT TIME ZONE 'UTC'
  AND created_date < (to_date('{month}', 'YYYYMM') + interval '1 month') AT TIME ZONE 'UTC';
DELETE FROM failed_job_default
WHERE created_date >= to_date('{month}', 'YYYYMM')::timestamp AT TIME ZONE 'UTC'
  AND created_date < (to_date('{month}', 'YYYYMM') + interval '1 month') AT TIME ZONE 'UTC';

-- name: delete_old_summaries
-- Retention: summaries of finished jobs created before the oldest kept month.
DELETE FROM job_summary
WHERE created_date < :before AND state IN ('Completed', 'Failed', 'Cancelled');
