-- Archives: completed jobs go to completed_job_YYYYMM, failed and cancelled ones to
-- failed_job_YYYYMM: one table pair per month of created_date, as on SQLite, created ahead by the
-- runtime, registered in archive_month and dropped whole by retention. (Monthly partitions would
-- need a partition function, which is per database rather than per schema, and a TRUNCATE of a
-- partition number plus a MERGE RANGE to drop a month; a table per month is a plain DROP TABLE.)
-- {month} is always a validated YYYYMM string, never user text.

-- name: create_archive
-- One month's archive tables; a no-op when they exist. ({start} and {end}, the month's bounds
-- as YYYYMMDD, are given to every dialect; partitioned ones need them.) The dialect runs a
-- script inside a transaction; the application lock makes processes starting together take
-- turns, where two concurrent CREATE TABLEs of one name would fail.
EXEC sp_getapplock @Resource = N'asyncjobs.archive', @LockMode = 'Exclusive',
    @LockOwner = 'Transaction', @LockTimeout = 60000;
IF OBJECT_ID(N'completed_job_{month}', N'U') IS NULL
CREATE TABLE completed_job_{month} (
    id bigint NOT NULL CONSTRAINT pk_completed_job_{month} PRIMARY KEY,
    parent_id bigint NULL,
    ref_id nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL,
    worker nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    tag nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    batch_id nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    callback nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    depends_on bigint NULL,
    run_after datetime2(6) NULL,
    created_date datetime2(6) NOT NULL,
    created_by nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    request_type nvarchar(16) COLLATE Latin1_General_100_BIN2 NOT NULL,
    command nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    request nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL,
    request_body nvarchar(max) NOT NULL,
    user_id nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    response nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    response_body nvarchar(max) NULL,
    state nvarchar(16) COLLATE Latin1_General_100_BIN2 NOT NULL,
    started_date datetime2(6) NULL,
    completed_date datetime2(6) NULL,
    notified_date datetime2(6) NULL,
    retry_limit int NOT NULL,
    attempts int NOT NULL,
    duration_ms bigint NULL,
    timeout_secs float NULL,
    progress float NULL,
    status nvarchar(max) NULL,
    logs nvarchar(max) NULL,
    last_activity_date datetime2(6) NULL,
    reply_to nvarchar(max) NULL,
    error_code nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    error nvarchar(max) NULL,
    args nvarchar(max) NULL,
    meta nvarchar(max) NULL,
    priority int NOT NULL
);
IF OBJECT_ID(N'failed_job_{month}', N'U') IS NULL
CREATE TABLE failed_job_{month} (
    id bigint NOT NULL CONSTRAINT pk_failed_job_{month} PRIMARY KEY,
    parent_id bigint NULL,
    ref_id nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL,
    worker nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    tag nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    batch_id nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    callback nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    depends_on bigint NULL,
    run_after datetime2(6) NULL,
    created_date datetime2(6) NOT NULL,
    created_by nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    request_type nvarchar(16) COLLATE Latin1_General_100_BIN2 NOT NULL,
    command nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    request nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL,
    request_body nvarchar(max) NOT NULL,
    user_id nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    response nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    response_body nvarchar(max) NULL,
    state nvarchar(16) COLLATE Latin1_General_100_BIN2 NOT NULL,
    started_date datetime2(6) NULL,
    completed_date datetime2(6) NULL,
    notified_date datetime2(6) NULL,
    retry_limit int NOT NULL,
    attempts int NOT NULL,
    duration_ms bigint NULL,
    timeout_secs float NULL,
    progress float NULL,
    status nvarchar(max) NULL,
    logs nvarchar(max) NULL,
    last_activity_date datetime2(6) NULL,
    reply_to nvarchar(max) NULL,
    error_code nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    error nvarchar(max) NULL,
    args nvarchar(max) NULL,
    meta nvarchar(max) NULL,
    priority int NOT NULL
);
IF NOT EXISTS (SELECT 1 FROM archive_month WHERE month = '{month}')
INSERT INTO archive_month (month) VALUES ('{month}');

-- name: archive_months
SELECT month FROM archive_month ORDER BY month;

-- name: archive_completed
-- Copy finished jobs of one month into its archive; the caller deletes them in the same
-- transaction.
INSERT INTO completed_job_{month} (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, response, response_body,
    state, started_date, completed_date, notified_date, retry_limit, attempts, duration_ms,
    timeout_secs, progress, status, logs, last_activity_date, reply_to, error_code, error, args,
    meta, priority
)
SELECT
    b.id, b.parent_id, b.ref_id, b.worker, b.tag, b.batch_id, b.callback, b.depends_on,
    b.run_after, b.created_date, b.created_by, b.request_type, b.command, b.request,
    b.request_body, b.user_id, b.response, b.response_body, b.state, b.started_date,
    b.completed_date, b.notified_date, b.retry_limit, b.attempts, b.duration_ms, b.timeout_secs,
    b.progress, b.status, b.logs, b.last_activity_date, b.reply_to, b.error_code, b.error,
    b.args, b.meta, b.priority
FROM OPENJSON(:ids) WITH (id bigint '$') AS i
JOIN background_job AS b ON b.id = i.id
WHERE b.state = 'Completed';

-- name: archive_failed
INSERT INTO failed_job_{month} (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, response, response_body,
    state, started_date, completed_date, notified_date, retry_limit, attempts, duration_ms,
    timeout_secs, progress, status, logs, last_activity_date, reply_to, error_code, error, args,
    meta, priority
)
SELECT
    b.id, b.parent_id, b.ref_id, b.worker, b.tag, b.batch_id, b.callback, b.depends_on,
    b.run_after, b.created_date, b.created_by, b.request_type, b.command, b.request,
    b.request_body, b.user_id, b.response, b.response_body, b.state, b.started_date,
    b.completed_date, b.notified_date, b.retry_limit, b.attempts, b.duration_ms, b.timeout_secs,
    b.progress, b.status, b.logs, b.last_activity_date, b.reply_to, b.error_code, b.error,
    b.args, b.meta, b.priority
FROM OPENJSON(:ids) WITH (id bigint '$') AS i
JOIN background_job AS b ON b.id = i.id
WHERE b.state IN ('Failed', 'Cancelled');

-- name: delete_archived
-- Remove archived jobs from the queue (same transaction as the archive insert).
DELETE b
FROM OPENJSON(:ids) WITH (id bigint '$') AS i
JOIN background_job AS b ON b.id = i.id
WHERE b.state IN ('Completed', 'Failed', 'Cancelled');

-- name: get_completed_job
SELECT * FROM completed_job_{month} WHERE id = :id AND created_date = :created_date;

-- name: get_failed_job
SELECT * FROM failed_job_{month} WHERE id = :id AND created_date = :created_date;

-- name: requeue_failed
-- Bring a failed or cancelled job back into the queue with the same id (ids come from a
-- sequence, so an explicit one is fine) and a fresh retry budget. Its worker's job_worker row
-- exists: those rows are never deleted.
-- :parent_pending marks a dependent whose parent has not completed, as the enqueue does:
-- it stays out of the claim's index until that completion (or the recovery) releases it.
INSERT INTO background_job (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, response, response_body,
    state, started_date, completed_date, notified_date, retry_limit, attempts, duration_ms,
    timeout_secs, progress, status, logs, last_activity_date, reply_to, error_code, error, args,
    meta, priority, parent_pending
)
SELECT
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, NULL, created_date,
    created_by, request_type, command, request, request_body, user_id, NULL, NULL, 'Queued',
    NULL, NULL, NULL, retry_limit, 0, NULL, timeout_secs, NULL, NULL, logs, :now, reply_to,
    error_code, error, args, meta, priority, :parent_pending
FROM failed_job_{month} WHERE id = :id;

-- name: delete_failed
-- The requeued job leaves the archive, and the requeue is counted for the change watch of
-- other processes (see migration_5). Last in the requeue's transaction but for its summary,
-- so the count's row, which every requeue updates, is held briefly.
DELETE FROM failed_job_{month} WHERE id = :id;
UPDATE job_requeues SET total = total + 1 WHERE id = 1;

-- name: drop_archive
-- Retention: a month goes as a unit.
EXEC sp_getapplock @Resource = N'asyncjobs.archive', @LockMode = 'Exclusive',
    @LockOwner = 'Transaction', @LockTimeout = 60000;
DROP TABLE IF EXISTS completed_job_{month};
DROP TABLE IF EXISTS failed_job_{month};
DELETE FROM archive_month WHERE month = '{month}';

-- name: oldest_active_created
-- Retention keeps the month of the oldest job still in the queue: it is archived there when it
-- ends (and other processes, which know the month exists, would find its table gone); and the
-- month of the oldest parent a job in the queue depends on: that job runs once the parent's
-- summary says Completed, and reads the parent's archived row. Ids grow with creation, so the
-- first by key is the oldest, and the least depends_on the oldest parent, both found without a
-- scan. One row for each (none for what does not exist); the caller takes the older.
SELECT created_date FROM (SELECT TOP 1 created_date FROM background_job ORDER BY id) AS a
UNION ALL
SELECT created_date FROM job_summary
WHERE id = (SELECT MIN(depends_on) FROM background_job WHERE depends_on IS NOT NULL);

-- name: delete_old_summaries
-- Retention: summaries of finished jobs created before the oldest kept month.
DELETE FROM job_summary
WHERE created_date < :before AND state IN ('Completed', 'Failed', 'Cancelled');

-- name: complete_and_claim_jobs
-- The finisher's and the dispatcher's query: record many successful executions and claim the
-- next jobs, as one transaction and one round trip (one batch). A pure claim passes no outcomes
-- ('[]'); a pure finish passes :limit 0. Returns one row per claimed job: done_ids (JSON array
-- text of the ids completed, NULL if none), dependents (1 if a queued job depends on one of
-- them) and the job's columns; with nothing claimed, exactly one row whose job columns are NULL.
-- The outcomes all belong to {month} (the store makes one call per archive month).
--
-- Completing: each job this node still holds gets its outcome, is copied into the month's
-- archive, has its summary updated and leaves the queue. A job missing from done_ids was taken
-- over by another node (its lease ran out). :outcomes is a JSON array of {id, attempts, duration_ms,
-- response, response_body, status, logs, notified_date}. The UPDATE waits for rows another
-- transaction holds (a cancel request, briefly); it is the first statement of the transaction,
-- so a deadlock there is retried by the dialect.
-- An outcome counts for the attempt it ended only (its attempts): written late, after the
-- job came back to this node and was claimed again, it is dropped (the job is not in done_ids).
--
-- Claiming: up to :limit runnable jobs in priority-then-age order, their summaries marked
-- Started. A job with a named worker is runnable only when no job of that worker is running and
-- it is the worker's oldest queued job (its head); a job with depends_on only when its parent
-- completed; a job is due once its run_after has passed by the database's clock (@due_by, as
-- leases are timed), and next_due_in says in how many seconds the next delayed job will be
-- (NULL: none, or :limit 0). The claim comes after the completions in the same transaction,
-- so a named worker whose running job completed here is idle for it, and no other transaction
-- can see the worker idle before it sees the next job Started (both commit together).
--
-- Locking (SQL Server has no SKIP LOCKED: WITH (UPDLOCK, READPAST, ROWLOCK) is its equivalent;
-- an update lock is held to the end of the transaction, and READPAST skips rows that another
-- transaction has locked instead of waiting for them):
-- 1. Workers that look idle with a due job are listed without keeping locks (READPAST: a locked
--    row only postpones a worker to the next claim). Only a hint: re-checked under the lock.
-- 2. Their job_worker rows are locked by key (FORCESEEK, so no other worker's row is touched),
--    skipping workers another claim holds. Deciding what a worker runs next is thus one
--    transaction at a time, cluster-wide.
-- 3. Holding a worker's lock, its running jobs are checked and its head is taken. These reads
--    start after the lock was granted, so they see every claim of the worker committed before
--    it (under locking READ COMMITTED they read committed rows and wait for uncommitted changes
--    to running jobs; under READ_COMMITTED_SNAPSHOT their snapshot is taken after the lock).
--    A worker's job only stops being Queued by a claim, which holds that lock, or by a cancel,
--    so the head cannot become stale before commit. The head is read WITH (UPDLOCK, READPAST):
--    skipped rows are uncommitted enqueues (not yet queued, as on the other databases) or jobs
--    being cancelled; nothing else locks a queued job of a named worker, because the claim of
--    jobs without a worker reads only ix_background_job_ready and ix_background_job_due.
-- 4. Jobs without a worker are taken with UPDLOCK, READPAST (concurrent claims take different
--    rows without waiting): those never delayed from ix_background_job_ready in claim order,
--    and delayed ones that are due from ix_background_job_due in due order. Neither index
--    holds a job not yet due, so a backlog of delayed jobs and retries costs the claim
--    nothing. The due ones are taken by priority among the 1 000 that came due first (read
--    plainly: a bound, so that a claim behind an outage's worth of due retries reads 1 000
--    rows), twice :limit of them locked at most.
-- 5. The best :limit candidates are marked Started (the rest stay Queued and are free at
--    commit), with their summaries, and returned.
-- Claims never wait on each other's locks; background_job never escalates to a table lock (see
-- migration_1), which READPAST could not skip.
DECLARE @now datetime2(6) = :now;
-- run_after is judged by the database's clock, as leases are (see nodes.sql)
DECLARE @due_by datetime2(6) = SYSUTCDATETIME();
DECLARE @node nvarchar(255) = :node;
DECLARE @limit int = :limit;
DECLARE @named_only bit = :named_only;
DECLARE @skip_named bit = :skip_named;
DECLARE @outcome TABLE (
    id bigint NOT NULL PRIMARY KEY,
    attempts int NOT NULL,
    duration_ms bigint NULL,
    response nvarchar(max) NULL,
    response_body nvarchar(max) NULL,
    status nvarchar(max) NULL,
    logs nvarchar(max) NULL,
    notified_date datetime2(6) NULL
);
DECLARE @done TABLE (id bigint NOT NULL PRIMARY KEY);
DECLARE @idle TABLE (name nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL PRIMARY KEY);
DECLARE @locked TABLE (name nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL PRIMARY KEY);
DECLARE @candidate TABLE (id bigint NOT NULL PRIMARY KEY, priority int NOT NULL);
DECLARE @due TABLE (id bigint NOT NULL PRIMARY KEY, priority int NOT NULL);
DECLARE @chosen TABLE (id bigint NOT NULL PRIMARY KEY);
INSERT INTO @outcome (
    id, attempts, duration_ms, response, response_body, status, logs, notified_date
)
SELECT id, attempts, duration_ms, response, response_body, status, logs, notified_date
FROM OPENJSON(:outcomes) WITH (
    id bigint '$.id',
    attempts int '$.attempts',
    duration_ms bigint '$.duration_ms',
    response nvarchar(max) '$.response',
    response_body nvarchar(max) '$.response_body',
    status nvarchar(max) '$.status',
    logs nvarchar(max) '$.logs',
    notified_date datetime2(6) '$.notified_date'
);
UPDATE b
SET state = 'Completed', completed_date = @now, last_activity_date = @now,
    duration_ms = o.duration_ms, response = o.response, response_body = o.response_body,
    error = NULL, error_code = NULL, progress = 1.0,
    status = COALESCE(o.status, b.status),
    notified_date = COALESCE(o.notified_date, b.notified_date),
    logs = CASE WHEN o.logs IS NULL THEN b.logs ELSE CONCAT(b.logs, o.logs) END
OUTPUT inserted.id INTO @done
FROM @outcome AS o
JOIN background_job AS b ON b.id = o.id
WHERE b.lease_owner = @node AND b.attempts = o.attempts AND b.state IN ('Started', 'Executed');
INSERT INTO completed_job_{month} (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, response, response_body,
    state, started_date, completed_date, notified_date, retry_limit, attempts, duration_ms,
    timeout_secs, progress, status, logs, last_activity_date, reply_to, error_code, error, args,
    meta, priority
)
SELECT
    b.id, b.parent_id, b.ref_id, b.worker, b.tag, b.batch_id, b.callback, b.depends_on,
    b.run_after, b.created_date, b.created_by, b.request_type, b.command, b.request,
    b.request_body, b.user_id, b.response, b.response_body, b.state, b.started_date,
    b.completed_date, b.notified_date, b.retry_limit, b.attempts, b.duration_ms, b.timeout_secs,
    b.progress, b.status, b.logs, b.last_activity_date, b.reply_to, b.error_code, b.error,
    b.args, b.meta, b.priority
FROM @done AS d
JOIN background_job AS b ON b.id = d.id;
UPDATE s
SET state = b.state, started_date = b.started_date, completed_date = b.completed_date,
    duration_ms = b.duration_ms, attempts = b.attempts, error_code = NULL, error_message = NULL
FROM @done AS d
JOIN background_job AS b ON b.id = d.id
JOIN job_summary AS s ON s.id = d.id;
DELETE b
FROM @done AS d
JOIN background_job AS b ON b.id = d.id;
-- Their dependents held for them are released (see migration_7). Rows another transaction
-- holds (an application's uncommitted dependent; a cancel, which locks a dependent and then its
-- parent, held here) are skipped, not waited for: release_dependents takes them later.
UPDATE q SET parent_pending = 0
FROM @done AS d
JOIN background_job AS q WITH (READPAST) ON q.depends_on = d.id
WHERE q.depends_on IS NOT NULL AND q.parent_pending = 1;
-- 1.
-- :skip_named = 1 leaves named workers out: a worker process draining a backlog looks at
-- their heads every so often, not at every claim (a look probes every worker with jobs).
INSERT INTO @idle (name)
SELECT w.name
FROM job_worker AS w WITH (READPAST)
WHERE @limit > 0 AND @skip_named = 0
  AND EXISTS (SELECT 1 FROM background_job AS q WITH (READPAST)
              WHERE q.worker = w.name AND q.state = 'Queued'
                AND (q.run_after IS NULL OR q.run_after <= @due_by))
  AND NOT EXISTS (SELECT 1 FROM background_job AS r WITH (READPAST)
                  WHERE r.worker = w.name AND r.state IN ('Started', 'Executed'));
-- 2.
INSERT INTO @locked (name)
SELECT w.name
FROM @idle AS i
JOIN job_worker AS w WITH (UPDLOCK, READPAST, ROWLOCK, FORCESEEK) ON w.name = i.name;
-- 3.
INSERT INTO @candidate (id, priority)
SELECT h.id, h.priority
FROM @locked AS l
CROSS APPLY (
    SELECT TOP (1) q.id, q.priority, q.run_after, q.depends_on
    FROM background_job AS q WITH (UPDLOCK, READPAST, ROWLOCK)
    WHERE q.worker = l.name AND q.state = 'Queued'
    ORDER BY q.id
) AS h
WHERE NOT EXISTS (SELECT 1 FROM background_job AS r
                  WHERE r.worker = l.name AND r.state IN ('Started', 'Executed'))
  AND (h.run_after IS NULL OR h.run_after <= @due_by)
  AND (h.depends_on IS NULL
       OR (SELECT p.state FROM job_summary AS p WHERE p.id = h.depends_on) = 'Completed');
-- 4.
INSERT INTO @candidate (id, priority)
SELECT TOP (@limit) j.id, j.priority
FROM background_job AS j WITH (UPDLOCK, READPAST, ROWLOCK, INDEX (ix_background_job_ready))
WHERE j.state = 'Queued' AND j.worker IS NULL AND j.run_after IS NULL AND @named_only = 0
  AND (j.depends_on IS NULL
       OR (SELECT p.state FROM job_summary AS p WHERE p.id = j.depends_on) = 'Completed')
ORDER BY j.priority DESC, j.id;
INSERT INTO @due (id, priority)
SELECT TOP (2 * @limit) w.id, w.priority
FROM (
    SELECT TOP (1000) d.id, d.priority
    FROM background_job AS d WITH (READPAST, INDEX (ix_background_job_due))
    WHERE d.state = 'Queued' AND d.worker IS NULL AND d.run_after IS NOT NULL
      AND d.run_after <= @due_by AND @named_only = 0
      AND (d.depends_on IS NULL
           OR (SELECT p.state FROM job_summary AS p WHERE p.id = d.depends_on) = 'Completed')
    ORDER BY d.run_after
) AS w
ORDER BY w.priority DESC, w.id;
INSERT INTO @candidate (id, priority)
SELECT TOP (@limit) j.id, j.priority
FROM @due AS w
JOIN background_job AS j WITH (UPDLOCK, READPAST, ROWLOCK) ON j.id = w.id
WHERE j.state = 'Queued' AND j.worker IS NULL AND j.run_after <= @due_by
ORDER BY w.priority DESC, w.id;
-- 5.
INSERT INTO @chosen (id)
SELECT TOP (@limit) id FROM @candidate ORDER BY priority DESC, id;
UPDATE s
SET state = 'Started', started_date = @now, completed_date = b.completed_date,
    duration_ms = b.duration_ms, attempts = b.attempts + 1, error_code = b.error_code,
    error_message = e.message
FROM @chosen AS c
JOIN background_job AS b ON b.id = c.id
JOIN job_summary AS s ON s.id = c.id
OUTER APPLY OPENJSON(b.error) WITH (message nvarchar(max) '$.message') AS e;
UPDATE b
SET state = 'Started', attempts = b.attempts + 1, started_date = @now,
    last_activity_date = @now, lease_owner = @node, cancel_requested = 0
FROM @chosen AS c
JOIN background_job AS b ON b.id = c.id;
-- The report row(s): done_ids and dependents on every row, the claimed jobs (or one row of
-- NULLs) beside them. STRING_AGG over no rows is NULL, and so is '[' + NULL + ']'.
-- next_due_in: seconds until the next delayed job is due, by the same clock, so the caller
-- can wake for it (one probe of ix_background_job_run_after; READPAST: a claim never waits,
-- and a delayed job being enqueued or retried is heard of by its own process).
SELECT r.done_ids, r.dependents, r.next_due_in, b.*
FROM (
    SELECT (SELECT '[' + STRING_AGG(CAST(d.id AS nvarchar(max)), ',') + ']' FROM @done AS d)
               AS done_ids,
           CASE WHEN EXISTS (SELECT 1 FROM @done AS d
                             JOIN background_job AS q ON q.depends_on = d.id
                             WHERE q.state = 'Queued')
                THEN 1 ELSE 0 END AS dependents,
           CASE WHEN @limit > 0 THEN
               (SELECT DATEDIFF_BIG(microsecond, @due_by, MIN(q.run_after)) / 1e6
                FROM background_job AS q WITH (READPAST)
                WHERE q.state = 'Queued' AND q.run_after > @due_by)
           END AS next_due_in
) AS r
LEFT JOIN (@chosen AS c JOIN background_job AS b ON b.id = c.id) ON 1 = 1;
