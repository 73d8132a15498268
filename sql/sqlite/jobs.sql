-- The job lifecycle: enqueue, claim, finish, retry, cancel, read.
-- Lists of ids and of new jobs arrive as one JSON array parameter, so a batch is one statement.

-- name: insert_jobs
-- Enqueue a batch of jobs given as a JSON array, each with its summary row, atomically; ids
-- follow the array's order. Two statements, run as one query by the dialect: the summaries are
-- found by ref_id (unique); the rows of the first statement (its RETURNING) are returned.
INSERT INTO background_job (
    parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date, created_by, request_type, command, request, request_body, user_id, state, retry_limit, timeout_secs, reply_to, args, meta, priority, parent_pending
)
SELECT
    json_extract(value, '$.parent_id'),
    json_extract(value, '$.ref_id'),
    json_extract(value, '$.worker'),
    json_extract(value, '$.tag'),
    json_extract(value, '$.batch_id'),
    json_extract(value, '$.callback'),
    json_extract(value, '$.depends_on'),
    json_extract(value, '$.run_after'),
    json_extract(value, '$.created_date'),
    json_extract(value, '$.created_by'),
    json_extract(value, '$.request_type'),
    json_extract(value, '$.command'),
    json_extract(value, '$.request'),
    json_extract(value, '$.request_body'),
    json_extract(value, '$.user_id'),
    'Queued',
    json_extract(value, '$.retry_limit'),
    json_extract(value, '$.timeout_secs'),
    json_extract(value, '$.reply_to'),
    json_extract(value, '$.args'),
    json_extract(value, '$.meta'),
    json_extract(value, '$.priority'),
    COALESCE(json_extract(value, '$.parent_pending'), 0)
FROM json_each(:jobs)
ORDER BY key
RETURNING id, ref_id;
INSERT INTO job_summary (id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, created_date, created_by, request_type, command, request, user_id, state, attempts)
SELECT id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, created_date, created_by, request_type, command, request, user_id, state, attempts
FROM background_job WHERE ref_id IN (SELECT json_extract(value, '$.ref_id') FROM json_each(:jobs));

-- name: insert_job
-- insert_jobs for one job, given column by column (one job is how most enqueues come): no
-- JSON to read. The first statement's RETURNING is the result.
INSERT INTO background_job (
    parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, state, retry_limit,
    timeout_secs, reply_to, args, meta, priority, parent_pending
)
VALUES (
    :parent_id, :ref_id, :worker, :tag, :batch_id, :callback, :depends_on, :run_after,
    :created_date, :created_by, :request_type, :command, :request, :request_body, :user_id,
    'Queued', :retry_limit, :timeout_secs, :reply_to, :args, :meta, :priority, :parent_pending
)
RETURNING id, ref_id;
INSERT INTO job_summary (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, created_date,
    created_by, request_type, command, request, user_id, state, attempts
)
SELECT b.id, b.parent_id, b.ref_id, b.worker, b.tag, b.batch_id, b.callback, b.depends_on,
       b.created_date, b.created_by, b.request_type, b.command, b.request, b.user_id, b.state,
       b.attempts
FROM background_job b WHERE b.id = last_insert_rowid();

-- name: insert_started_jobs
-- Enqueue jobs that :node starts at once: a process that executes jobs enqueued them and has
-- room, so they are inserted already claimed (Started, first attempt, leased), with their
-- summaries; only their ids come back (the first statement's RETURNING; the caller knows the
-- rest of each row). No claim, no wake-up. Only for jobs with no worker, dependency or delay
-- (the store checks).
INSERT INTO background_job (
    parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date, created_by, request_type, command, request, request_body, user_id, state, retry_limit, timeout_secs, reply_to, args, meta, priority, attempts, started_date, last_activity_date, lease_owner
)
SELECT
    json_extract(value, '$.parent_id'),
    json_extract(value, '$.ref_id'),
    json_extract(value, '$.worker'),
    json_extract(value, '$.tag'),
    json_extract(value, '$.batch_id'),
    json_extract(value, '$.callback'),
    json_extract(value, '$.depends_on'),
    json_extract(value, '$.run_after'),
    json_extract(value, '$.created_date'),
    json_extract(value, '$.created_by'),
    json_extract(value, '$.request_type'),
    json_extract(value, '$.command'),
    json_extract(value, '$.request'),
    json_extract(value, '$.request_body'),
    json_extract(value, '$.user_id'),
    'Started',
    json_extract(value, '$.retry_limit'),
    json_extract(value, '$.timeout_secs'),
    json_extract(value, '$.reply_to'),
    json_extract(value, '$.args'),
    json_extract(value, '$.meta'),
    json_extract(value, '$.priority'),
    1, :now, :now, :node
FROM json_each(:jobs)
ORDER BY key
RETURNING id, ref_id;
INSERT INTO job_summary (id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, created_date, created_by, request_type, command, request, user_id, state, attempts, started_date)
SELECT id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, created_date, created_by, request_type, command, request, user_id, state, attempts, started_date
FROM background_job WHERE ref_id IN (SELECT json_extract(value, '$.ref_id') FROM json_each(:jobs));

-- name: insert_started_job
-- insert_started_jobs for one job, given column by column (one job is how most enqueues
-- come): no JSON to read. The id comes back from the first statement's RETURNING.
INSERT INTO background_job (
    parent_id, ref_id, tag, batch_id, callback, created_date, created_by, request_type, command,
    request, request_body, user_id, state, retry_limit, timeout_secs, reply_to, args, meta,
    priority, attempts, started_date, last_activity_date, lease_owner
)
VALUES (
    :parent_id, :ref_id, :tag, :batch_id, :callback, :created_date, :created_by, :request_type,
    :command, :request, :request_body, :user_id, 'Started', :retry_limit, :timeout_secs,
    :reply_to, :args, :meta, :priority, 1, :now, :now, :node
)
RETURNING id, ref_id;
INSERT INTO job_summary (id, parent_id, ref_id, tag, batch_id, callback, created_date, created_by, request_type, command, request, user_id, state, attempts, started_date)
SELECT id, parent_id, ref_id, tag, batch_id, callback, created_date, created_by, request_type, command, request, user_id, state, attempts, started_date
FROM background_job WHERE id = last_insert_rowid();

-- name: mark_summaries
-- Copy the live state of jobs into their summaries.
UPDATE job_summary
SET state = b.state, started_date = b.started_date, completed_date = b.completed_date,
    duration_ms = b.duration_ms, attempts = b.attempts, error_code = b.error_code,
    error_message = json_extract(b.error, '$.message')
FROM background_job b
WHERE b.id = job_summary.id AND b.id IN (SELECT value FROM json_each(:ids));

-- name: set_outcome
-- Record how one execution ended; only the node holding the job may do it. A failure of a job
-- another process asked to cancel while it ran (before this node heard of it) ends Cancelled,
-- as its retry would have (see cancel_requested_among).
UPDATE background_job
SET state = CASE WHEN cancel_requested AND :state = 'Failed' THEN 'Cancelled' ELSE :state END,
    completed_date = :now, last_activity_date = :now, duration_ms = :duration_ms,
    response = :response, response_body = :response_body, error = :error,
    error_code = CASE WHEN cancel_requested AND :state = 'Failed' THEN 'Cancelled'
                      ELSE :error_code END,
    progress = COALESCE(:progress, progress),
    status = COALESCE(:status, status), notified_date = COALESCE(:notified_date, notified_date),
    logs = CASE WHEN :logs IS NULL THEN logs ELSE COALESCE(logs, '') || :logs END
WHERE id = :id AND lease_owner = :node AND attempts = :attempts;

-- name: mark_executed
-- The command succeeded and its callback runs next; the result is kept meanwhile.
UPDATE background_job
SET state = 'Executed', response = :response, response_body = :response_body,
    last_activity_date = :now
WHERE id = :id AND lease_owner = :node AND attempts = :attempts;

-- name: requeue_job
-- Put a job back in the queue after a failed attempt or a shutdown. A retry waits out its
-- backoff (:retry_in_us, NULL for none) by this machine's clock (every process shares it), as the claim judges run_after.
-- Only the attempt that ended: an earlier write of this outcome may have committed and lost its
-- reply, and the job been claimed again since. :unused (1 or 0): the attempt never ran its
-- code (its runner was cancelled first), so the claim's count of it is given back. A cancel request stays (see cancel_requested_among).
UPDATE background_job
SET state = 'Queued', attempts = attempts - :unused,
    run_after = CASE WHEN :retry_in_us IS NOT NULL THEN
                    strftime('%Y-%m-%d %H:%M:%f000', :now,
                             printf('+%.6f seconds', :retry_in_us / 1000000.0)) END,
    error = :error, error_code = :error_code,
    last_activity_date = :now, lease_owner = NULL,
    logs = CASE WHEN :logs IS NULL THEN logs ELSE COALESCE(logs, '') || :logs END
WHERE id = :id AND lease_owner = :node AND attempts = :attempts;

-- name: announce_requeued
-- Jobs went back to the queue under their old ids (a retry, a shutdown, a dead node's lease):
-- nothing to send, as every commit moves the data version other processes watch.
SELECT 1;

-- name: update_progress
-- A running job's progress, status line and new log text (appended). :logs_at is how long the
-- writer holds the stored text to be before :logs: what is stored past that is a prefix of
-- :logs that an earlier write stored though its reply was lost, and is not appended again.
-- Only the node holding the job writes: one whose job was taken over (its lease lapsed) would
-- write into the next attempt's logs, whose own writes then start at the wrong offset.
UPDATE background_job
SET progress = COALESCE(:progress, progress), status = COALESCE(:status, status),
    logs = CASE WHEN :logs IS NULL THEN logs
                ELSE COALESCE(logs, '') || substr(
                    :logs, MAX(length(COALESCE(logs, '')) - :logs_at, 0) + 1)
           END,
    last_activity_date = :now
WHERE id = :id AND lease_owner = :node;

-- name: cancel_queued
-- Cancel jobs that have not started; they are archived by the caller.
UPDATE background_job
SET state = 'Cancelled', completed_date = :now, last_activity_date = :now, error = :error,
    error_code = 'Cancelled'
WHERE id IN (SELECT value FROM json_each(:ids)) AND state = 'Queued'
RETURNING id;

-- name: request_cancel
-- Flag running jobs for cancellation; the node running each is told (or polls) and stops it.
-- Only those not flagged yet: a job counts as cancelled once, however often it is asked.
UPDATE background_job SET cancel_requested = 1
WHERE id IN (SELECT value FROM json_each(:ids)) AND state IN ('Started', 'Executed')
  AND cancel_requested = 0
RETURNING id, lease_owner;

-- name: held_jobs
-- The jobs leased to this node, and whether another process asked to cancel each: the node
-- stops those, and those it runs that are no longer its own (taken over by another process
-- after this one missed its lease, e.g. with its event loop blocked).
SELECT id, cancel_requested FROM background_job WHERE lease_owner = :node;

-- name: cancel_dependents
-- Cancel every queued job that depends, directly or transitively, on a failed or cancelled job.
-- The error names the ancestor that failed, however deep the dependent is.
WITH RECURSIVE doomed(id, ancestor) AS (
    SELECT j.id, p.id FROM background_job j
    JOIN job_summary p ON p.id = j.depends_on
    WHERE j.state = 'Queued' AND p.state IN ('Failed', 'Cancelled')
      AND p.id IN (SELECT value FROM json_each(:ids))
    UNION
    SELECT j.id, d.ancestor FROM background_job j JOIN doomed d ON j.depends_on = d.id
    WHERE j.state = 'Queued'
)
UPDATE background_job
SET state = 'Cancelled', completed_date = :now, last_activity_date = :now,
    error_code = 'DependencyFailed',
    error = json_object(
        'message', 'cancelled because job '
                   || (SELECT MIN(d.ancestor) FROM doomed d WHERE d.id = background_job.id)
                   || ' it depends on failed or was cancelled',
        'type', 'DependencyFailed', 'traceback', NULL)
WHERE id IN (SELECT id FROM doomed)
RETURNING id, created_date;

-- name: stranded_parents
-- Failed or cancelled jobs that queued jobs still depend on. A dependent enqueued in a
-- transaction that committed after its parent ended was missed by that parent's cascade,
-- which could not see it yet (nor could the enqueue see the parent's end): the periodic
-- recovery cancels it then, as the cascade would have. The parents are found by a loose scan
-- of ix_background_job_depends_on, one probe per parent that has dependents (100k dependents
-- of one parent are one probe, not 100k).
WITH RECURSIVE parents(id) AS (
    SELECT MIN(depends_on) FROM background_job WHERE depends_on IS NOT NULL
    UNION ALL
    SELECT (SELECT MIN(b.depends_on) FROM background_job b
            WHERE b.depends_on IS NOT NULL AND b.depends_on > p.id)
    FROM parents p WHERE p.id IS NOT NULL
)
SELECT p.id FROM parents p JOIN job_summary s ON s.id = p.id
WHERE s.state IN ('Failed', 'Cancelled')
  AND EXISTS (SELECT 1 FROM background_job j WHERE j.depends_on = p.id AND j.state = 'Queued');

-- name: release_dependents
-- Dependents still held whose parent has completed. SQLite lets one transaction write at a
-- time, and refuses a write on a snapshot older than the last commit, so an enqueue cannot read
-- its parent before a completion and commit after it: this finds none, and runs as on the other
-- databases. The parents are found by a loose scan of ix_background_job_held (held jobs only),
-- one probe per parent. (The statement starts with UPDATE, not WITH, so that the driver
-- reports how many rows it changed.)
UPDATE background_job SET parent_pending = 0
WHERE parent_pending = 1
  AND depends_on IN (
      WITH RECURSIVE parents(id) AS (
          SELECT MIN(depends_on) FROM background_job WHERE parent_pending = 1
          UNION ALL
          SELECT (SELECT MIN(b.depends_on) FROM background_job b
                  WHERE b.parent_pending = 1 AND b.depends_on > p.id)
          FROM parents p WHERE p.id IS NOT NULL
      )
      SELECT p.id FROM parents p
      WHERE (SELECT s.state FROM job_summary s WHERE s.id = p.id) = 'Completed'
  );

-- name: orphaned_dependents
-- Queued jobs whose parent has already failed or been cancelled (enqueued after it ended).
SELECT j.depends_on AS id FROM background_job j
JOIN job_summary p ON p.id = j.depends_on
WHERE j.id IN (SELECT value FROM json_each(:ids)) AND p.state IN ('Failed', 'Cancelled');

-- name: select_job_ids
-- Active jobs by state and worker (either may be NULL: any).
SELECT id FROM background_job
WHERE (:state IS NULL OR state = :state) AND (:worker IS NULL OR worker = :worker)
ORDER BY id;

-- name: get_active_job
SELECT * FROM background_job WHERE id = :id;

-- name: get_summary
SELECT * FROM job_summary WHERE id = :id;

-- name: get_summary_by_ref_id
SELECT * FROM job_summary WHERE ref_id = :ref_id;

-- name: get_summaries
SELECT * FROM job_summary WHERE id IN (SELECT value FROM json_each(:ids));

-- name: jobs_by_ref_ids
-- Jobs by their ref ids, with the node that holds each if it is still queued or running: an
-- insert whose reply was lost is recognised by its ref ids, creation time and holder.
SELECT s.id, s.ref_id, s.created_date, b.lease_owner
FROM job_summary s LEFT JOIN background_job b ON b.id = s.id
WHERE s.ref_id IN (SELECT value FROM json_each(:ref_ids));

-- name: final_states
-- The state of jobs that reached a final state (or have no summary at all).
SELECT id, state FROM job_summary
WHERE id IN (SELECT value FROM json_each(:ids))
  AND state IN ('Completed', 'Failed', 'Cancelled');

-- name: recent_durations
-- The last durations of a command on a worker, for progress estimates.
SELECT duration_ms FROM job_summary
WHERE command = :command AND (worker = :worker OR (worker IS NULL AND :worker IS NULL))
  AND state = 'Completed' AND duration_ms IS NOT NULL
ORDER BY id DESC LIMIT 10;

-- name: newest_job_id
-- The newest job's id, which moves when any process enqueues (the MySQL dialect's change watch
-- reads it; kept in every dialect so that each has the same queries).
SELECT MAX(id) AS id, 0 AS requeues FROM background_job;

-- name: visible_job_ids
-- The jobs with an id above :after, and those of :ids that exist (the MySQL dialect's change
-- watch reads it; kept in every dialect so that each has the same queries).
SELECT id, NULL AS requeues FROM background_job WHERE id IN (SELECT value FROM json_each(:ids))
UNION ALL
SELECT id, NULL FROM (SELECT id FROM background_job WHERE id > :after ORDER BY id LIMIT 1000)
UNION ALL
SELECT NULL, 0;

-- name: cancel_requested_among
-- Which of :ids another process asked to cancel: an attempt that ended (failed, or stopped by a
-- shutdown) before its node heard of the request is cancelled, not retried.
SELECT id FROM background_job WHERE id IN (SELECT value FROM json_each(:ids)) AND cancel_requested = 1;
