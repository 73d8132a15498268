-- The job lifecycle: enqueue, finish, retry, cancel, read (the claim is complete_and_claim_jobs,
-- in archive.sql).
-- Lists of ids and of new jobs arrive as one JSON array parameter, read with
-- OPENJSON(:ids) WITH (id bigint '$') and joined to the table by its key, so a batch is one
-- statement and each id one index seek.
--
-- A query of several statements is one batch, sent in one round trip: statements hand values to
-- each other in table variables (DECLARE @x TABLE), and the rows of the last statement that
-- returns rows are the result (`fetch`); `execute` counts the rows of the last statement that
-- changed any. The dialect runs such a batch inside a transaction (its own, on an autocommitting
-- connection) with XACT_ABORT ON, so an error anywhere rolls all of it back.
-- Table variables declare their string columns with the tables' binary collation: they would
-- otherwise take the database default and fail to compare with the columns they join.

-- name: insert_jobs
-- Enqueue a batch of jobs given as a JSON array, each with its summary row; ids follow the
-- array's order (NEXT VALUE FOR ... OVER (ORDER BY) numbers them in that order). New named
-- workers get their job_worker row, which the claim locks; the check that finds them takes no
-- lock on a known worker, so enqueueing never waits for a claim (IGNORE_DUP_KEY absorbs two
-- enqueues adding one new worker at once).
DECLARE @jobs nvarchar(max) = :jobs;
DECLARE @new TABLE (
    id bigint NOT NULL PRIMARY KEY,
    ref_id nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL
);
INSERT INTO background_job (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, state, retry_limit,
    timeout_secs, reply_to, args, meta, priority, parent_pending
)
OUTPUT inserted.id, inserted.ref_id INTO @new
SELECT
    NEXT VALUE FOR background_job_id OVER (ORDER BY CAST(a.[key] AS int)),
    j.parent_id, j.ref_id, j.worker, j.tag, j.batch_id, j.callback, j.depends_on, j.run_after,
    j.created_date, j.created_by, j.request_type, j.command, j.request, j.request_body,
    j.user_id, 'Queued', j.retry_limit, j.timeout_secs, j.reply_to, j.args, j.meta, j.priority,
    COALESCE(j.parent_pending, 0)
FROM OPENJSON(@jobs) AS a
CROSS APPLY OPENJSON(a.[value]) WITH (
    parent_id bigint '$.parent_id',
    ref_id nvarchar(max) '$.ref_id',
    worker nvarchar(max) '$.worker',
    tag nvarchar(max) '$.tag',
    batch_id nvarchar(max) '$.batch_id',
    callback nvarchar(max) '$.callback',
    depends_on bigint '$.depends_on',
    run_after datetime2(6) '$.run_after',
    created_date datetime2(6) '$.created_date',
    created_by nvarchar(max) '$.created_by',
    request_type nvarchar(max) '$.request_type',
    command nvarchar(max) '$.command',
    request nvarchar(max) '$.request',
    request_body nvarchar(max) '$.request_body',
    user_id nvarchar(max) '$.user_id',
    retry_limit int '$.retry_limit',
    timeout_secs float '$.timeout_secs',
    reply_to nvarchar(max) '$.reply_to',
    args nvarchar(max) '$.args',
    meta nvarchar(max) '$.meta',
    priority int '$.priority',
    parent_pending bit '$.parent_pending'
) AS j;
INSERT INTO job_summary (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on,
    created_date, created_by, request_type, command, request, user_id, state, attempts
)
SELECT b.id, b.parent_id, b.ref_id, b.worker, b.tag, b.batch_id, b.callback, b.depends_on,
       b.created_date, b.created_by, b.request_type, b.command, b.request, b.user_id, b.state,
       b.attempts
FROM @new AS n
JOIN background_job AS b ON b.id = n.id;
INSERT INTO job_worker (name)
SELECT DISTINCT b.worker
FROM @new AS n
JOIN background_job AS b ON b.id = n.id
WHERE b.worker IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM job_worker AS w WHERE w.name = b.worker);
SELECT id, ref_id FROM @new;

-- name: insert_job
-- insert_jobs for one job, given column by column (one job is how most enqueues come): no
-- JSON to read. A new named worker gets its job_worker row as in insert_jobs.
DECLARE @id bigint = NEXT VALUE FOR background_job_id;
DECLARE @worker nvarchar(255) = :worker;
INSERT INTO background_job (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, state, retry_limit,
    timeout_secs, reply_to, args, meta, priority, parent_pending
)
VALUES (
    @id, :parent_id, :ref_id, :worker, :tag, :batch_id, :callback, :depends_on, :run_after,
    :created_date, :created_by, :request_type, :command, :request, :request_body, :user_id,
    'Queued', :retry_limit, :timeout_secs, :reply_to, :args, :meta, :priority, :parent_pending
);
INSERT INTO job_summary (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, created_date,
    created_by, request_type, command, request, user_id, state, attempts
)
SELECT b.id, b.parent_id, b.ref_id, b.worker, b.tag, b.batch_id, b.callback, b.depends_on,
       b.created_date, b.created_by, b.request_type, b.command, b.request, b.user_id, b.state,
       b.attempts
FROM background_job AS b WHERE b.id = @id;
INSERT INTO job_worker (name)
SELECT @worker
WHERE @worker IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM job_worker AS w WHERE w.name = @worker);
SELECT @id AS id, :ref_id AS ref_id;

-- name: insert_started_jobs
-- Enqueue jobs that :node starts at once: a process that executes jobs enqueued them and has
-- room, so they are inserted already claimed (Started, first attempt, leased), with their
-- summaries; only their ids come back (the caller knows the rest of each row). No round trip
-- for a claim. Only for jobs with no worker, dependency or delay (the store checks), so no
-- job_worker rows.
DECLARE @jobs nvarchar(max) = :jobs;
DECLARE @now datetime2(6) = :now;
DECLARE @new TABLE (id bigint NOT NULL PRIMARY KEY);
INSERT INTO background_job (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, state, retry_limit,
    timeout_secs, reply_to, args, meta, priority, attempts, started_date, last_activity_date,
    lease_owner
)
OUTPUT inserted.id INTO @new
SELECT
    NEXT VALUE FOR background_job_id OVER (ORDER BY CAST(a.[key] AS int)),
    j.parent_id, j.ref_id, j.worker, j.tag, j.batch_id, j.callback, j.depends_on, j.run_after,
    j.created_date, j.created_by, j.request_type, j.command, j.request, j.request_body,
    j.user_id, 'Started', j.retry_limit, j.timeout_secs, j.reply_to, j.args, j.meta, j.priority,
    1, @now, @now, :node
FROM OPENJSON(@jobs) AS a
CROSS APPLY OPENJSON(a.[value]) WITH (
    parent_id bigint '$.parent_id',
    ref_id nvarchar(max) '$.ref_id',
    worker nvarchar(max) '$.worker',
    tag nvarchar(max) '$.tag',
    batch_id nvarchar(max) '$.batch_id',
    callback nvarchar(max) '$.callback',
    depends_on bigint '$.depends_on',
    run_after datetime2(6) '$.run_after',
    created_date datetime2(6) '$.created_date',
    created_by nvarchar(max) '$.created_by',
    request_type nvarchar(max) '$.request_type',
    command nvarchar(max) '$.command',
    request nvarchar(max) '$.request',
    request_body nvarchar(max) '$.request_body',
    user_id nvarchar(max) '$.user_id',
    retry_limit int '$.retry_limit',
    timeout_secs float '$.timeout_secs',
    reply_to nvarchar(max) '$.reply_to',
    args nvarchar(max) '$.args',
    meta nvarchar(max) '$.meta',
    priority int '$.priority'
) AS j;
INSERT INTO job_summary (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on,
    created_date, created_by, request_type, command, request, user_id, state, attempts,
    started_date
)
SELECT b.id, b.parent_id, b.ref_id, b.worker, b.tag, b.batch_id, b.callback, b.depends_on,
       b.created_date, b.created_by, b.request_type, b.command, b.request, b.user_id, b.state,
       b.attempts, b.started_date
FROM @new AS n
JOIN background_job AS b ON b.id = n.id;
SELECT b.id, b.ref_id FROM @new AS n JOIN background_job AS b ON b.id = n.id;

-- name: insert_started_job
-- insert_started_jobs for one job, given column by column (one job is how most enqueues
-- come): no JSON to read.
DECLARE @id bigint = NEXT VALUE FOR background_job_id;
DECLARE @now datetime2(6) = :now;
INSERT INTO background_job (
    id, parent_id, ref_id, tag, batch_id, callback, created_date, created_by, request_type,
    command, request, request_body, user_id, state, retry_limit, timeout_secs, reply_to, args,
    meta, priority, attempts, started_date, last_activity_date, lease_owner
)
VALUES (
    @id, :parent_id, :ref_id, :tag, :batch_id, :callback, :created_date, :created_by,
    :request_type, :command, :request, :request_body, :user_id, 'Started', :retry_limit,
    :timeout_secs, :reply_to, :args, :meta, :priority, 1, @now, @now, :node
);
INSERT INTO job_summary (
    id, parent_id, ref_id, tag, batch_id, callback, created_date, created_by, request_type,
    command, request, user_id, state, attempts, started_date
)
SELECT b.id, b.parent_id, b.ref_id, b.tag, b.batch_id, b.callback, b.created_date, b.created_by,
       b.request_type, b.command, b.request, b.user_id, b.state, b.attempts, b.started_date
FROM background_job AS b
WHERE b.id = @id;
SELECT @id AS id, :ref_id AS ref_id;

-- name: mark_summaries
-- Copy the live state of jobs into their summaries. The error message is read with OPENJSON,
-- which returns nvarchar(max); JSON_VALUE would return NULL for a message over 4000 characters.
UPDATE s
SET state = b.state, started_date = b.started_date, completed_date = b.completed_date,
    duration_ms = b.duration_ms, attempts = b.attempts, error_code = b.error_code,
    error_message = e.message
FROM OPENJSON(:ids) WITH (id bigint '$') AS i
JOIN background_job AS b ON b.id = i.id
JOIN job_summary AS s ON s.id = b.id
OUTER APPLY OPENJSON(b.error) WITH (message nvarchar(max) '$.message') AS e;

-- name: set_outcome
-- Record how one execution ended; only the node holding the job may do it. A failure of a job
-- another process asked to cancel while it ran (before this node heard of it) ends Cancelled,
-- as its retry would have (see cancel_requested_among).
UPDATE background_job
SET state = CASE WHEN cancel_requested = 1 AND :state = 'Failed' THEN 'Cancelled' ELSE :state END,
    completed_date = :now, last_activity_date = :now, duration_ms = :duration_ms,
    response = :response, response_body = :response_body, error = :error,
    error_code = CASE WHEN cancel_requested = 1 AND :state = 'Failed' THEN 'Cancelled'
                      ELSE :error_code END,
    progress = COALESCE(:progress, progress),
    status = COALESCE(:status, status), notified_date = COALESCE(:notified_date, notified_date),
    logs = CASE WHEN :logs IS NULL THEN logs ELSE CONCAT(logs, :logs) END
WHERE id = :id AND lease_owner = :node AND attempts = :attempts;

-- name: mark_executed
-- The command succeeded and its callback runs next; the result is kept meanwhile.
UPDATE background_job
SET state = 'Executed', response = :response, response_body = :response_body,
    last_activity_date = :now
WHERE id = :id AND lease_owner = :node AND attempts = :attempts;

-- name: requeue_job
-- Put a job back in the queue after a failed attempt or a shutdown. A retry waits out its
-- backoff (:retry_in_us, NULL for none) by the database's clock, as the claim judges run_after.
-- Only the attempt that ended: an earlier write of this outcome may have committed and lost its
-- reply, and the job been claimed again since. :unused (1 or 0): the attempt never ran its
-- code (its runner was cancelled first), so the claim's count of it is given back. A cancel request stays (see cancel_requested_among).
UPDATE background_job
SET state = 'Queued', attempts = attempts - :unused,
    -- DATEADD takes an int: whole seconds, then the microseconds left
    run_after = DATEADD(microsecond, CAST(:retry_in_us % 1000000 AS int),
                        DATEADD(second, CAST(:retry_in_us / 1000000 AS int), SYSUTCDATETIME())),
    error = :error, error_code = :error_code,
    last_activity_date = :now, lease_owner = NULL,
    logs = CASE WHEN :logs IS NULL THEN logs ELSE CONCAT(logs, :logs) END
WHERE id = :id AND lease_owner = :node AND attempts = :attempts;

-- name: announce_requeued
-- Jobs went back to the queue under their old ids (a retry, a shutdown, a dead node's lease),
-- which the change watch of new ids cannot see: count them as requeues, which it reads too (see
-- migration_5). Last in its transaction, so the count's row is held briefly.
UPDATE job_requeues SET total = total + 1 WHERE id = 1;

-- name: update_progress
-- A running job's progress, status line and new log text (appended; CONCAT reads NULL as '').
-- :logs_at is how long the writer holds the stored text to be before :logs, in UTF-16 code
-- units as DATALENGTH / 2 counts them: what is stored past that is a prefix of :logs that an
-- earlier write stored though its reply was lost, and is not appended again.
UPDATE background_job
SET progress = COALESCE(:progress, progress), status = COALESCE(:status, status),
    logs = CASE WHEN :logs IS NULL THEN logs
                ELSE CONCAT(logs, SUBSTRING(:logs,
                    CASE WHEN DATALENGTH(logs) / 2 > :logs_at
                         THEN DATALENGTH(logs) / 2 - :logs_at ELSE 0 END + 1, 2147483647))
           END,
    last_activity_date = :now
WHERE id = :id AND lease_owner = :node;

-- name: cancel_queued
-- Cancel jobs that have not started; they are archived by the caller. An UPDATE reads its target
-- rows with update locks, also under READ_COMMITTED_SNAPSHOT: it waits for a claim holding one
-- and then sees it Started, so a claimed job is never cancelled here.
UPDATE b
SET state = 'Cancelled', completed_date = :now, last_activity_date = :now, error = :error,
    error_code = 'Cancelled'
OUTPUT inserted.id
FROM OPENJSON(:ids) WITH (id bigint '$') AS i
JOIN background_job AS b ON b.id = i.id
WHERE b.state = 'Queued';

-- name: request_cancel
-- Flag running jobs for cancellation; the node running each is told (or polls) and stops it.
-- Only those not flagged yet: a job counts as cancelled once, however often it is asked.
UPDATE b
SET cancel_requested = 1
OUTPUT inserted.id, inserted.lease_owner
FROM OPENJSON(:ids) WITH (id bigint '$') AS i
JOIN background_job AS b ON b.id = i.id
WHERE b.state IN ('Started', 'Executed') AND b.cancel_requested = 0;

-- name: held_jobs
-- The jobs leased to this node, and whether another process asked to cancel each: the node
-- stops those, and those it runs that are no longer its own (taken over by another process
-- after this one missed its lease, e.g. with its event loop blocked).
SELECT id, cancel_requested FROM background_job WHERE lease_owner = :node;

-- name: cancel_dependents
-- Cancel every queued job that depends, directly or transitively, on a failed or cancelled job.
-- The error names the ancestor that failed, however deep the dependent is (its id is a number,
-- so the JSON needs no escaping). T-SQL's recursive CTE takes UNION ALL only; dependencies
-- cannot form a cycle (a job depends on one that exists before it), and MAXRECURSION 0 lifts
-- the default limit of 100 levels. The UPDATE re-checks the state under its update lock.
DECLARE @doomed TABLE (id bigint NOT NULL PRIMARY KEY, ancestor bigint NOT NULL);
WITH doomed (id, ancestor) AS (
    SELECT j.id, p.id
    FROM OPENJSON(:ids) WITH (id bigint '$') AS r
    JOIN job_summary AS p ON p.id = r.id
    JOIN background_job AS j ON j.depends_on = p.id
    WHERE j.state = 'Queued' AND p.state IN ('Failed', 'Cancelled')
    UNION ALL
    SELECT j.id, d.ancestor
    FROM doomed AS d
    JOIN background_job AS j ON j.depends_on = d.id
    WHERE j.state = 'Queued'
)
INSERT INTO @doomed (id, ancestor)
SELECT id, MIN(ancestor) FROM doomed GROUP BY id
OPTION (MAXRECURSION 0);
UPDATE b
SET state = 'Cancelled', completed_date = :now, last_activity_date = :now,
    error_code = 'DependencyFailed',
    error = CONCAT(N'{"message":"cancelled because job ', d.ancestor,
                   N' it depends on failed or was cancelled","type":"DependencyFailed",',
                   N'"traceback":null}')
OUTPUT inserted.id, inserted.created_date
FROM @doomed AS d
JOIN background_job AS b ON b.id = d.id
WHERE b.state = 'Queued';

-- name: stranded_parents
-- Failed or cancelled jobs that queued jobs still depend on. A dependent enqueued in a
-- transaction that committed after its parent ended was missed by that parent's cascade,
-- which could not see it yet (nor could the enqueue see the parent's end): the periodic
-- recovery cancels it then, as the cascade would have.
SELECT DISTINCT j.depends_on AS id FROM background_job AS j
JOIN job_summary AS p ON p.id = j.depends_on
WHERE j.depends_on IS NOT NULL AND j.state = 'Queued' AND p.state IN ('Failed', 'Cancelled');

-- name: release_dependents
-- Dependents still held whose parent has completed: enqueued in a transaction that committed
-- after the parent's completion, which could not see them (nor could the enqueue see the
-- completion), or skipped by it as locked. The periodic recovery releases them; returns how
-- many. Rows another transaction holds (an application's uncommitted dependent, a cancel) are
-- skipped (READPAST), not waited for: they are left for the next time.
UPDATE j SET parent_pending = 0
FROM background_job AS j WITH (READPAST)
JOIN job_summary AS p ON p.id = j.depends_on
WHERE j.depends_on IS NOT NULL AND j.parent_pending = 1 AND j.state = 'Queued'
  AND p.state = 'Completed';

-- name: orphaned_dependents
-- Queued jobs whose parent has already failed or been cancelled (enqueued after it ended).
SELECT j.depends_on AS id
FROM OPENJSON(:ids) WITH (id bigint '$') AS i
JOIN background_job AS j ON j.id = i.id
JOIN job_summary AS p ON p.id = j.depends_on
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
SELECT s.*
FROM OPENJSON(:ids) WITH (id bigint '$') AS i
JOIN job_summary AS s ON s.id = i.id;

-- name: jobs_by_ref_ids
-- Jobs by their ref ids, with the node that holds each if it is still queued or running: an
-- insert whose reply was lost is recognised by its ref ids, creation time and holder.
SELECT s.id, s.ref_id, s.created_date, b.lease_owner
FROM OPENJSON(:ref_ids) WITH (ref_id nvarchar(255) '$') AS r
JOIN job_summary AS s ON s.ref_id = r.ref_id COLLATE Latin1_General_100_BIN2
LEFT JOIN background_job AS b ON b.id = s.id;

-- name: final_states
-- The state of jobs that reached a final state (or have no summary at all).
SELECT s.id, s.state
FROM OPENJSON(:ids) WITH (id bigint '$') AS i
JOIN job_summary AS s ON s.id = i.id
WHERE s.state IN ('Completed', 'Failed', 'Cancelled');

-- name: recent_durations
-- The last durations of a command on a worker, for progress estimates (a NULL worker matches
-- jobs without one; IS NOT DISTINCT FROM is SQL Server 2022+).
SELECT TOP (10) duration_ms FROM job_summary
WHERE command = :command AND (worker = :worker OR (worker IS NULL AND :worker IS NULL))
  AND state = 'Completed' AND duration_ms IS NOT NULL
ORDER BY id DESC;

-- name: newest_job_id
-- The change watch's first read (SQL Server has no notifications that reach a client): it moves
-- when any process enqueues. One look at the end of the primary key; READPAST, so that an
-- enqueue not yet committed is skipped rather than waited for (the watch finds it later); and
-- the count of requeues (a requeued job keeps its id; the count is read as committed, READPAST
-- skipping a requeue under way).
SELECT MAX(id) AS id,
       (SELECT total FROM job_requeues WITH (READPAST) WHERE id = 1) AS requeues
FROM background_job WITH (READPAST);

-- name: visible_job_ids
-- The change watch's other read: the jobs with an id above :after (the newest it has seen), at
-- most 1000, and which of :ids exist now (ids it saw skipped: enqueues that had not committed
-- yet, or never will). All by key; READPAST as above, so an id still held stays skipped. The
-- last row is the count of requeues (its id NULL; no row while a requeue holds it).
SELECT b.id, CAST(NULL AS bigint) AS requeues
FROM OPENJSON(:ids) WITH (id bigint '$') AS i
JOIN background_job AS b WITH (READPAST) ON b.id = i.id
UNION ALL
SELECT id, NULL FROM (
    SELECT TOP (1000) id FROM background_job WITH (READPAST) WHERE id > :after ORDER BY id
) AS newer
UNION ALL
SELECT NULL, total FROM job_requeues WITH (READPAST) WHERE id = 1;

-- name: cancel_requested_among
-- Which of :ids another process asked to cancel: an attempt that ended (failed, or stopped by a
-- shutdown) before its node heard of the request is cancelled, not retried.
SELECT b.id FROM OPENJSON(:ids) WITH (id bigint '$') AS i
JOIN background_job AS b ON b.id = i.id
WHERE b.cancel_requested = 1;
