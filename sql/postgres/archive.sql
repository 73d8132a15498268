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

-- name: complete_jobs
-- The finisher's common case, many successful executions at once: each job this node still
-- holds leaves the queue for the archive with its outcome, and its summary is updated. Returns
-- the ids completed; a job missing from them was taken over by another node (its lease ran
-- out). :outcomes is a JSON array of {id, duration_ms, response, response_body, status, logs,
-- notified_date}.
-- Differs from SQLite: one statement (data-modifying CTEs), so it is atomic on an autocommitting
-- connection and costs one round trip; and the row is moved (DELETE ... RETURNING into INSERT)
-- rather than updated, copied and deleted.
WITH outcome AS MATERIALIZED (
    SELECT * FROM jsonb_to_recordset(:outcomes::jsonb) AS o(
        id bigint, duration_ms bigint, response text, response_body text, status text,
        logs text, notified_date timestamptz)
),
done AS (
    DELETE FROM background_job b
    WHERE b.id = ANY (ARRAY(SELECT id FROM outcome)) AND b.lease_owner = :node
    RETURNING b.*
),
archived AS (
    INSERT INTO completed_job (
        id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after,
        created_date, created_by, request_type, command, request, request_body, user_id,
        response, response_body, state, started_date, completed_date, notified_date,
        retry_limit, attempts, duration_ms, timeout_secs, progress, status, logs,
        last_activity_date, reply_to, error_code, error, args, meta, priority
    )
    SELECT
        d.id, d.parent_id, d.ref_id, d.worker, d.tag, d.batch_id, d.callback, d.depends_on,
        d.run_after, d.created_date, d.created_by, d.request_type, d.command, d.request,
        d.request_body, d.user_id, o.response, o.response_body, 'Completed', d.started_date,
        :now, COALESCE(o.notified_date, d.notified_date), d.retry_limit, d.attempts,
        o.duration_ms, d.timeout_secs, 1.0, COALESCE(o.status, d.status),
        CASE WHEN o.logs IS NULL THEN d.logs ELSE COALESCE(d.logs, '') || o.logs END,
        :now, d.reply_to, NULL, NULL, d.args, d.meta, d.priority
    FROM done d JOIN outcome o ON o.id = d.id
),
summaries AS (
    UPDATE job_summary s
    SET state = 'Completed', started_date = d.started_date, completed_date = :now,
        duration_ms = o.duration_ms, attempts = d.attempts, error_code = NULL,
        error_message = NULL
    FROM done d JOIN outcome o ON o.id = d.id
    WHERE s.id = d.id AND s.id = ANY (ARRAY(SELECT id FROM done))
)
SELECT id FROM done;

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
