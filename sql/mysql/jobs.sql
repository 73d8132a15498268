-- The job lifecycle: enqueue, claim, finish, retry, cancel, read.
-- Lists of ids and of new jobs arrive as one JSON array parameter, read with JSON_TABLE, so a
-- batch is one statement. Lists are joined (UPDATE/DELETE t JOIN JSON_TABLE ...) rather than
-- tested with IN (subquery): MariaDB plans a single-table UPDATE or DELETE with IN (subquery)
-- as a scan of the whole table.
--
-- MySQL has no RETURNING (MariaDB has it for INSERT and DELETE, not UPDATE), so a query that
-- returns what it changed is several statements run in order, in one transaction, by the
-- dialect: a locking SELECT keeps the ids it locked in a session variable (@asyncjobs_*,
-- always assigned because an aggregate returns one row), the UPDATE changes those rows, and the
-- last statement returns the rows. `fetch` returns the rows of the last statement and `execute`
-- its row count.

-- name: insert_jobs
-- Enqueue a batch of jobs given as a JSON array; ids follow the array's order. The ids are read
-- back by ref_id (unique) because MySQL has no INSERT ... RETURNING and interleaved auto-increment
-- (MySQL 8's default) does not promise consecutive ids within one INSERT ... SELECT. New named
-- workers get their job_worker row, which the claim locks; a plain SELECT finds them first, so
-- enqueueing for a known worker takes no lock on it.
INSERT INTO background_job (
    parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, state, retry_limit,
    timeout_secs, reply_to, args, meta, priority
)
SELECT
    j.parent_id, j.ref_id, j.worker, j.tag, j.batch_id, j.callback, j.depends_on, j.run_after,
    j.created_date, j.created_by, j.request_type, j.command, j.request, j.request_body,
    j.user_id, 'Queued', j.retry_limit, j.timeout_secs, j.reply_to, j.args, j.meta, j.priority
FROM JSON_TABLE(:jobs, '$[*]' COLUMNS (
    n FOR ORDINALITY,
    parent_id BIGINT PATH '$.parent_id',
    ref_id LONGTEXT PATH '$.ref_id',
    worker LONGTEXT PATH '$.worker',
    tag LONGTEXT PATH '$.tag',
    batch_id LONGTEXT PATH '$.batch_id',
    callback LONGTEXT PATH '$.callback',
    depends_on BIGINT PATH '$.depends_on',
    run_after DATETIME(6) PATH '$.run_after',
    created_date DATETIME(6) PATH '$.created_date',
    created_by LONGTEXT PATH '$.created_by',
    request_type LONGTEXT PATH '$.request_type',
    command LONGTEXT PATH '$.command',
    request LONGTEXT PATH '$.request',
    request_body LONGTEXT PATH '$.request_body',
    user_id LONGTEXT PATH '$.user_id',
    retry_limit INT PATH '$.retry_limit',
    timeout_secs DOUBLE PATH '$.timeout_secs',
    reply_to LONGTEXT PATH '$.reply_to',
    args LONGTEXT PATH '$.args',
    meta LONGTEXT PATH '$.meta',
    priority INT PATH '$.priority'
)) AS j
ORDER BY j.n;
SELECT JSON_ARRAYAGG(n.worker) INTO @asyncjobs_workers FROM (
    SELECT DISTINCT j.worker
    FROM JSON_TABLE(:jobs, '$[*]' COLUMNS (worker VARCHAR(255) PATH '$.worker')) AS j
    WHERE j.worker IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM job_worker w WHERE w.name = j.worker)
) AS n;
INSERT INTO job_worker (name)
SELECT j.name FROM JSON_TABLE(@asyncjobs_workers, '$[*]' COLUMNS (name VARCHAR(255) PATH '$')) AS j
ON DUPLICATE KEY UPDATE job_worker.name = job_worker.name;
SELECT b.id, b.ref_id
FROM JSON_TABLE(:jobs, '$[*]' COLUMNS (ref_id VARCHAR(255) PATH '$.ref_id')) AS j
JOIN background_job b ON b.ref_id = j.ref_id;

-- name: insert_summaries
-- One summary row per newly enqueued job.
INSERT INTO job_summary (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, created_date, created_by,
    request_type, command, request, user_id, state, attempts
)
SELECT
    b.id, b.parent_id, b.ref_id, b.worker, b.tag, b.batch_id, b.callback, b.depends_on,
    b.created_date, b.created_by, b.request_type, b.command, b.request, b.user_id, b.state,
    b.attempts
FROM JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
JOIN background_job b ON b.id = i.id;

-- name: claim_jobs
-- Claim up to :limit runnable jobs in priority-then-age order. A job with a named worker is
-- runnable only when no job of that worker is running and it is the worker's oldest queued job;
-- a job with depends_on only when its parent completed.
-- Unlike PostgreSQL (one UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING *),
-- MySQL cannot return what an UPDATE changed, so the claim is four statements:
-- 1. Lock the job_worker rows of named workers that have a due job and nothing running,
--    skipping workers another claim holds. Without this, the NOT EXISTS checks below read
--    committed data only: two processes could each see a worker idle (a claim of another of its
--    jobs not yet committed, e.g. after enqueues committed out of id order) and both start one.
--    Holding the worker row makes the decision for a worker one transaction at a time. The
--    session runs READ COMMITTED, so statement 2 sees every claim committed before it acquired
--    the lock (under REPEATABLE READ it would reuse the snapshot taken before the lock).
-- 2. Pick and lock runnable jobs, skipping rows other transactions hold.
-- 3. Mark them Started. 4. Return them.
-- Every lock here is taken with SKIP LOCKED, so a claim never waits and claims cannot deadlock
-- with each other.
SELECT JSON_ARRAYAGG(l.name) INTO @asyncjobs_workers FROM (
    SELECT w.name FROM job_worker w
    WHERE w.name IN (SELECT q.worker FROM background_job q
                     WHERE q.state = 'Queued' AND q.worker IS NOT NULL
                       AND (q.run_after IS NULL OR q.run_after <= :now))
      AND NOT EXISTS (SELECT 1 FROM background_job r
                      WHERE r.worker = w.name AND r.state IN ('Started', 'Executed'))
    FOR UPDATE SKIP LOCKED
) AS l;
SELECT JSON_ARRAYAGG(c.id) INTO @asyncjobs_claimed FROM (
    SELECT j.id FROM background_job j
    WHERE j.state = 'Queued'
      AND (j.run_after IS NULL OR j.run_after <= :now)
      AND (:named_only = 0 OR j.worker IS NOT NULL)
      AND (j.depends_on IS NULL OR EXISTS (
            SELECT 1 FROM job_summary p WHERE p.id = j.depends_on AND p.state = 'Completed'))
      AND (j.worker IS NULL OR (
            j.worker IN (SELECT lw.name FROM JSON_TABLE(@asyncjobs_workers, '$[*]'
                                 COLUMNS (name VARCHAR(255) PATH '$')) AS lw)
            AND NOT EXISTS (SELECT 1 FROM background_job r
                            WHERE r.worker = j.worker AND r.state IN ('Started', 'Executed'))
            AND NOT EXISTS (SELECT 1 FROM background_job e
                            WHERE e.worker = j.worker AND e.state = 'Queued' AND e.id < j.id)))
    ORDER BY j.priority DESC, j.id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
) AS c;
UPDATE JSON_TABLE(@asyncjobs_claimed, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
JOIN background_job b ON b.id = i.id
SET b.state = 'Started', b.attempts = b.attempts + 1, b.started_date = :now,
    b.last_activity_date = :now, b.lease_owner = :node, b.cancel_requested = 0;
SELECT b.* FROM JSON_TABLE(@asyncjobs_claimed, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
JOIN background_job b ON b.id = i.id;

-- name: mark_summaries
-- Copy the live state of jobs into their summaries.
UPDATE JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
JOIN background_job b ON b.id = i.id
JOIN job_summary s ON s.id = b.id
SET s.state = b.state, s.started_date = b.started_date, s.completed_date = b.completed_date,
    s.duration_ms = b.duration_ms, s.attempts = b.attempts, s.error_code = b.error_code,
    s.error_message = JSON_UNQUOTE(JSON_EXTRACT(b.error, '$.message'));

-- name: next_run_after
-- When the earliest delayed job becomes runnable, so the dispatcher can sleep until then.
SELECT MIN(run_after) AS run_after FROM background_job
WHERE state = 'Queued' AND run_after > :now;

-- name: set_outcome
-- Record how one execution ended; only the node holding the job may do it.
UPDATE background_job
SET state = :state, completed_date = :now, last_activity_date = :now, duration_ms = :duration_ms,
    response = :response, response_body = :response_body, error = :error,
    error_code = :error_code, progress = COALESCE(:progress, progress),
    status = COALESCE(:status, status), notified_date = COALESCE(:notified_date, notified_date),
    logs = CASE WHEN :logs IS NULL THEN logs ELSE CONCAT(COALESCE(logs, ''), :logs) END
WHERE id = :id AND lease_owner = :node;

-- name: mark_executed
-- The command succeeded and its callback runs next; the result is kept meanwhile.
UPDATE background_job
SET state = 'Executed', response = :response, response_body = :response_body,
    last_activity_date = :now
WHERE id = :id AND lease_owner = :node;

-- name: requeue_job
-- Put a job back in the queue after a failed attempt (run_after: the backoff) or a shutdown.
UPDATE background_job
SET state = 'Queued', run_after = :run_after, error = :error, error_code = :error_code,
    last_activity_date = :now, lease_owner = NULL, cancel_requested = 0,
    logs = CASE WHEN :logs IS NULL THEN logs ELSE CONCAT(COALESCE(logs, ''), :logs) END
WHERE id = :id AND lease_owner = :node;

-- name: update_progress
-- A running job's progress, status line and new log text (appended).
UPDATE background_job
SET progress = COALESCE(:progress, progress), status = COALESCE(:status, status),
    logs = CASE WHEN :logs IS NULL THEN logs ELSE CONCAT(COALESCE(logs, ''), :logs) END,
    last_activity_date = :now
WHERE id = :id;

-- name: cancel_queued
-- Cancel jobs that have not started; they are archived by the caller. No UPDATE ... RETURNING
-- in MySQL: lock the queued ones (waiting for a claim that holds one, then seeing it Started),
-- cancel exactly those, return their ids.
SELECT JSON_ARRAYAGG(q.id) INTO @asyncjobs_ids FROM (
    SELECT b.id FROM JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
    JOIN background_job b ON b.id = i.id
    WHERE b.state = 'Queued'
    FOR UPDATE
) AS q;
UPDATE JSON_TABLE(@asyncjobs_ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
JOIN background_job b ON b.id = i.id
SET b.state = 'Cancelled', b.completed_date = :now, b.last_activity_date = :now,
    b.error = :error, b.error_code = 'Cancelled';
SELECT i.id FROM JSON_TABLE(@asyncjobs_ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i;

-- name: request_cancel
-- Flag running jobs for cancellation; the node running each is told (or polls) and stops it.
-- No UPDATE ... RETURNING in MySQL: lock, flag, then read the flagged rows.
SELECT JSON_ARRAYAGG(r.id) INTO @asyncjobs_ids FROM (
    SELECT b.id FROM JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
    JOIN background_job b ON b.id = i.id
    WHERE b.state IN ('Started', 'Executed')
    FOR UPDATE
) AS r;
UPDATE JSON_TABLE(@asyncjobs_ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
JOIN background_job b ON b.id = i.id
SET b.cancel_requested = 1;
SELECT b.id, b.lease_owner FROM JSON_TABLE(@asyncjobs_ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
JOIN background_job b ON b.id = i.id;

-- name: cancel_requests
-- Jobs this node runs whose cancellation another process asked for.
SELECT id FROM background_job WHERE lease_owner = :node AND cancel_requested = 1;

-- name: cancel_dependents
-- Cancel every queued job that depends, directly or transitively, on a failed or cancelled job.
-- The error names the ancestor that failed, however deep the dependent is.
-- MariaDB allows WITH only before SELECT, and there is no UPDATE ... RETURNING: collect the
-- dependents with their ancestor, lock those still queued, cancel them, return them.
WITH RECURSIVE doomed (id, ancestor) AS (
    SELECT j.id, p.id FROM JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS r
    JOIN job_summary p ON p.id = r.id
    JOIN background_job j ON j.depends_on = p.id
    WHERE j.state = 'Queued' AND p.state IN ('Failed', 'Cancelled')
    UNION
    SELECT j.id, d.ancestor FROM doomed d JOIN background_job j ON j.depends_on = d.id
    WHERE j.state = 'Queued'
)
SELECT JSON_ARRAYAGG(JSON_OBJECT('id', d.id, 'ancestor', d.ancestor)) INTO @asyncjobs_doomed
FROM (SELECT id, MIN(ancestor) AS ancestor FROM doomed GROUP BY id) AS d;
SELECT JSON_ARRAYAGG(JSON_OBJECT('id', q.id, 'ancestor', q.ancestor)) INTO @asyncjobs_doomed
FROM (
    SELECT b.id, i.ancestor
    FROM JSON_TABLE(@asyncjobs_doomed, '$[*]'
                    COLUMNS (id BIGINT PATH '$.id', ancestor BIGINT PATH '$.ancestor')) AS i
    JOIN background_job b ON b.id = i.id
    WHERE b.state = 'Queued'
    FOR UPDATE
) AS q;
UPDATE JSON_TABLE(@asyncjobs_doomed, '$[*]'
                  COLUMNS (id BIGINT PATH '$.id', ancestor BIGINT PATH '$.ancestor')) AS i
JOIN background_job b ON b.id = i.id
SET b.state = 'Cancelled', b.completed_date = :now, b.last_activity_date = :now,
    b.error_code = 'DependencyFailed',
    b.error = JSON_OBJECT('message', CONCAT('cancelled because job ', i.ancestor,
                                            ' it depends on failed or was cancelled'),
                          'type', 'DependencyFailed', 'traceback', NULL);
SELECT b.id, b.created_date
FROM JSON_TABLE(@asyncjobs_doomed, '$[*]' COLUMNS (id BIGINT PATH '$.id')) AS i
JOIN background_job b ON b.id = i.id;

-- name: orphaned_dependents
-- Queued jobs whose parent has already failed or been cancelled (enqueued after it ended).
SELECT j.depends_on AS id FROM JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
JOIN background_job j ON j.id = i.id
JOIN job_summary p ON p.id = j.depends_on
WHERE p.state IN ('Failed', 'Cancelled');

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
SELECT s.* FROM JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
JOIN job_summary s ON s.id = i.id;

-- name: final_states
-- The state of jobs that reached a final state (or have no summary at all).
SELECT s.id, s.state FROM JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
JOIN job_summary s ON s.id = i.id
WHERE s.state IN ('Completed', 'Failed', 'Cancelled');

-- name: recent_durations
-- The last durations of a command on a worker, for progress estimates (<=> matches NULL too).
SELECT duration_ms FROM job_summary
WHERE command = :command AND worker <=> :worker
  AND state = 'Completed' AND duration_ms IS NOT NULL
ORDER BY id DESC LIMIT 10;
