-- The job lifecycle: enqueue, claim, finish, retry, cancel, read.
-- Lists of ids arrive as one JSON array parameter, read with JSON_TABLE, so a batch is one
-- statement; new jobs as a list of rows, written out as one multi-row INSERT (the dialect's
-- "each"). Lists are joined, JSON_TABLE first and the table by its key
-- (JSON_TABLE(...) AS i STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id),
-- rather than tested with IN (subquery): MariaDB plans a single-table UPDATE or DELETE with
-- IN (subquery) as a scan of the whole table, and a statement that scans locks every row it
-- reads, so it would wait for (or deadlock with) transactions holding unrelated jobs. The
-- fixed join order keeps it that way on small tables too, where a scan looks cheaper.
--
-- MySQL has no RETURNING (MariaDB has it for INSERT and DELETE, not UPDATE), so a query that
-- returns what it changed is several statements run in order, in one transaction, by the
-- dialect: a locking SELECT keeps the ids it locked in a session variable (@asyncjobs_*,
-- always assigned because an aggregate returns one row), the UPDATE changes those rows, and the
-- last statement returns the rows. `fetch` returns the rows of the last statement and `execute`
-- its row count.

-- name: insert_jobs
-- Enqueue a batch of jobs, given as a list of rows (one multi-row INSERT, see the dialect's
-- "each"), each with its summary row; ids follow the list's order. The summaries are copied
-- from the new rows, found by ref_id (unique) in the index, one key at a time: in the
-- application's transaction, which is usually REPEATABLE READ, such an INSERT ... SELECT locks
-- only the rows it reads, which are this transaction's own (one that scanned would also lock
-- the gaps between them, and block every other enqueue until the application commits). The ids are read back by ref_id because MySQL has no INSERT ...
-- RETURNING, and neither interleaved auto-increment (MySQL 8's default) nor an
-- auto_increment_increment above 1 promises consecutive ids. New named workers get their
-- job_worker row, which the claim locks; a plain SELECT finds the known ones first, so
-- enqueueing for a known worker takes no lock on it.
INSERT INTO background_job (
    parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, state, retry_limit,
    timeout_secs, reply_to, args, meta, priority, parent_pending
)
VALUES /* each :jobs */ (
    :parent_id, :ref_id, :worker, :tag, :batch_id, :callback, :depends_on, :run_after,
    :created_date, :created_by, :request_type, :command, :request, :request_body, :user_id,
    'Queued', :retry_limit, :timeout_secs, :reply_to, :args, :meta, :priority, :parent_pending
);
SELECT JSON_ARRAYAGG(n.name) INTO @asyncjobs_workers FROM (
    SELECT DISTINCT j.name
    FROM JSON_TABLE(JSON_ARRAY(/* each :jobs */ (:worker)), '$[*]'
                    COLUMNS (name VARCHAR(255) PATH '$')) AS j
    WHERE j.name IS NOT NULL AND NOT EXISTS (SELECT 1 FROM job_worker w WHERE w.name = j.name)
) AS n;
INSERT INTO job_worker (name)
SELECT j.name FROM JSON_TABLE(@asyncjobs_workers, '$[*]' COLUMNS (name VARCHAR(255) PATH '$')) AS j
ON DUPLICATE KEY UPDATE job_worker.name = job_worker.name;
INSERT INTO job_summary (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on,
    created_date, created_by, request_type, command, request, user_id, state, attempts
)
SELECT b.id, b.parent_id, b.ref_id, b.worker, b.tag, b.batch_id, b.callback, b.depends_on,
       b.created_date, b.created_by, b.request_type, b.command, b.request, b.user_id, b.state,
       b.attempts
FROM background_job b FORCE INDEX (ux_background_job_ref_id)
WHERE b.ref_id IN (/* each :jobs */ (:ref_id));
SELECT b.id, b.ref_id FROM background_job b FORCE INDEX (ux_background_job_ref_id)
WHERE b.ref_id IN (/* each :jobs */ (:ref_id));

-- name: insert_job
-- insert_jobs for one job, given column by column: single-row INSERT ... VALUES, the summary
-- written from the same values (so nothing is read, and nothing locked, in the application's
-- REPEATABLE READ transaction) under the id LAST_INSERT_ID() gives (job_summary and job_worker
-- have no auto-increment, so it stays the job's; the closing SELECT is answered by the dialect
-- from the INSERT's reply, not sent). A new named worker gets its job_worker row
-- as in insert_jobs: a consistent read finds it first; with no worker both statements are
-- empty.
INSERT INTO background_job (
    parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, state, retry_limit,
    timeout_secs, reply_to, args, meta, priority, parent_pending
)
VALUES (
    :parent_id, :ref_id, :worker, :tag, :batch_id, :callback, :depends_on, :run_after,
    :created_date, :created_by, :request_type, :command, :request, :request_body, :user_id,
    'Queued', :retry_limit, :timeout_secs, :reply_to, :args, :meta, :priority, :parent_pending
);
INSERT INTO job_summary (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, created_date,
    created_by, request_type, command, request, user_id, state, attempts
)
VALUES (
    LAST_INSERT_ID(), :parent_id, :ref_id, :worker, :tag, :batch_id, :callback, :depends_on,
    :created_date, :created_by, :request_type, :command, :request, :user_id, 'Queued', 0
);
SELECT COUNT(*) INTO @asyncjobs_known_worker FROM job_worker WHERE name = :worker;
INSERT INTO job_worker (name)
SELECT :worker FROM DUAL WHERE :worker IS NOT NULL AND @asyncjobs_known_worker = 0
ON DUPLICATE KEY UPDATE job_worker.name = job_worker.name;
SELECT LAST_INSERT_ID() AS id, :ref_id AS ref_id;

-- name: insert_started_jobs
-- Enqueue jobs that :node starts at once: a process that executes jobs enqueued them and has
-- room, so they are inserted already claimed (Started, first attempt, leased), with their
-- summaries; only their ids come back (the caller knows the rest of each row). No claim, no
-- wake-up. Only for jobs with no worker (so no job_worker row), dependency or delay (the store
-- checks). A list of rows, as for insert_jobs (the values every row shares are session
-- variables: a group's parameters are the row's); this always runs on the dialect's own READ
-- COMMITTED connection.
SET @asyncjobs_now = :now, @asyncjobs_node = :node;
INSERT INTO background_job (
    parent_id, ref_id, tag, batch_id, callback, created_date, created_by, request_type, command,
    request, request_body, user_id, state, retry_limit, timeout_secs, reply_to, args, meta,
    priority, attempts, started_date, last_activity_date, lease_owner
)
VALUES /* each :jobs */ (
    :parent_id, :ref_id, :tag, :batch_id, :callback, :created_date, :created_by, :request_type,
    :command, :request, :request_body, :user_id, 'Started', :retry_limit, :timeout_secs,
    :reply_to, :args, :meta, :priority, 1, @asyncjobs_now, @asyncjobs_now, @asyncjobs_node
);
INSERT INTO job_summary (
    id, parent_id, ref_id, tag, batch_id, callback, created_date, created_by, request_type,
    command, request, user_id, state, attempts, started_date
)
SELECT b.id, b.parent_id, b.ref_id, b.tag, b.batch_id, b.callback, b.created_date,
       b.created_by, b.request_type, b.command, b.request, b.user_id, b.state, b.attempts,
       b.started_date
FROM background_job b FORCE INDEX (ux_background_job_ref_id)
WHERE b.ref_id IN (/* each :jobs */ (:ref_id));
SELECT b.id, b.ref_id FROM background_job b FORCE INDEX (ux_background_job_ref_id)
WHERE b.ref_id IN (/* each :jobs */ (:ref_id));

-- name: insert_started_job
-- insert_started_jobs for one job, given column by column: a single-row INSERT ... VALUES
-- takes the server a third less time than reading one row from JSON_TABLE (0.7 ms instead of
-- 1.0 ms for the round trip on MariaDB 10.11), and one job is how most enqueues come. The
-- summary is written from the same values under the id LAST_INSERT_ID() gives (job_summary,
-- with no auto-increment, leaves it alone): INSERT ... VALUES costs the server less than
-- copying the new row with INSERT ... SELECT. The closing SELECT is answered by the dialect.
INSERT INTO background_job (
    parent_id, ref_id, tag, batch_id, callback, created_date, created_by, request_type, command,
    request, request_body, user_id, state, retry_limit, timeout_secs, reply_to, args, meta,
    priority, attempts, started_date, last_activity_date, lease_owner
)
VALUES (
    :parent_id, :ref_id, :tag, :batch_id, :callback, :created_date, :created_by, :request_type,
    :command, :request, :request_body, :user_id, 'Started', :retry_limit, :timeout_secs,
    :reply_to, :args, :meta, :priority, 1, :now, :now, :node
);
INSERT INTO job_summary (
    id, parent_id, ref_id, tag, batch_id, callback, created_date, created_by, request_type,
    command, request, user_id, state, attempts, started_date
)
VALUES (
    LAST_INSERT_ID(), :parent_id, :ref_id, :tag, :batch_id, :callback, :created_date,
    :created_by, :request_type, :command, :request, :user_id, 'Started', 1, :now
);
SELECT LAST_INSERT_ID() AS id, :ref_id AS ref_id;

-- name: mark_summaries
-- Copy the live state of jobs into their summaries.
UPDATE JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
STRAIGHT_JOIN job_summary s FORCE INDEX (PRIMARY) ON s.id = b.id
SET s.state = b.state, s.started_date = b.started_date, s.completed_date = b.completed_date,
    s.duration_ms = b.duration_ms, s.attempts = b.attempts, s.error_code = b.error_code,
    s.error_message = JSON_UNQUOTE(JSON_EXTRACT(b.error, '$.message'));

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
    logs = CASE WHEN :logs IS NULL THEN logs ELSE CONCAT(COALESCE(logs, ''), :logs) END
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
    run_after = UTC_TIMESTAMP(6) + INTERVAL :retry_in_us MICROSECOND,
    error = :error, error_code = :error_code,
    last_activity_date = :now, lease_owner = NULL,
    logs = CASE WHEN :logs IS NULL THEN logs ELSE CONCAT(COALESCE(logs, ''), :logs) END
WHERE id = :id AND lease_owner = :node AND attempts = :attempts;

-- name: announce_requeued
-- Jobs went back to the queue under their old ids (a retry, a shutdown, a dead node's lease),
-- which the change watch of new ids cannot see: count them as requeues, which it reads too (see
-- migration_5). Last in its transaction, so the count's row is held briefly.
UPDATE job_requeues SET total = total + 1 WHERE id = 1;

-- name: update_progress
-- A running job's progress, status line and new log text (appended). :logs_at is how long the
-- writer holds the stored text to be before :logs: what is stored past that is a prefix of
-- :logs that an earlier write stored though its reply was lost, and is not appended again.
-- Only the node holding the job writes: one whose job was taken over (its lease lapsed) would
-- write into the next attempt's logs, whose own writes then start at the wrong offset.
UPDATE background_job
SET progress = COALESCE(:progress, progress), status = COALESCE(:status, status),
    logs = CASE WHEN :logs IS NULL THEN logs
                ELSE CONCAT(COALESCE(logs, ''), SUBSTRING(
                    :logs, GREATEST(CHAR_LENGTH(COALESCE(logs, '')) - :logs_at, 0) + 1))
           END,
    last_activity_date = :now
WHERE id = :id AND lease_owner = :node;

-- name: cancel_queued
-- Cancel jobs that have not started; they are archived by the caller. No UPDATE ... RETURNING
-- in MySQL: lock the queued ones (waiting for a claim that holds one, then seeing it Started),
-- cancel exactly those, return their ids.
SELECT JSON_ARRAYAGG(q.id) INTO @asyncjobs_ids FROM (
    SELECT b.id FROM JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
    STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
    WHERE b.state = 'Queued'
    FOR UPDATE
) AS q;
UPDATE JSON_TABLE(@asyncjobs_ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
SET b.state = 'Cancelled', b.completed_date = :now, b.last_activity_date = :now,
    b.error = :error, b.error_code = 'Cancelled';
SELECT i.id FROM JSON_TABLE(@asyncjobs_ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i;

-- name: request_cancel
-- Flag running jobs for cancellation; the node running each is told (or polls) and stops it.
-- Only those not flagged yet: a job counts as cancelled once, however often it is asked.
-- No UPDATE ... RETURNING in MySQL: lock, flag, then read the flagged rows.
SELECT JSON_ARRAYAGG(r.id) INTO @asyncjobs_ids FROM (
    SELECT b.id FROM JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
    STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
    WHERE b.state IN ('Started', 'Executed') AND b.cancel_requested = 0
    FOR UPDATE
) AS r;
UPDATE JSON_TABLE(@asyncjobs_ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
SET b.cancel_requested = 1;
SELECT b.id, b.lease_owner FROM JSON_TABLE(@asyncjobs_ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id;

-- name: held_jobs
-- The jobs leased to this node, and whether another process asked to cancel each: the node
-- stops those, and those it runs that are no longer its own (taken over by another process
-- after this one missed its lease, e.g. with its event loop blocked).
SELECT id, cancel_requested FROM background_job WHERE lease_owner = :node;

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
    STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
    WHERE b.state = 'Queued'
    FOR UPDATE
) AS q;
UPDATE JSON_TABLE(@asyncjobs_doomed, '$[*]'
                  COLUMNS (id BIGINT PATH '$.id', ancestor BIGINT PATH '$.ancestor')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
SET b.state = 'Cancelled', b.completed_date = :now, b.last_activity_date = :now,
    b.error_code = 'DependencyFailed',
    b.error = JSON_OBJECT('message', CONCAT('cancelled because job ', i.ancestor,
                                            ' it depends on failed or was cancelled'),
                          'type', 'DependencyFailed', 'traceback', NULL);
SELECT b.id, b.created_date
FROM JSON_TABLE(@asyncjobs_doomed, '$[*]' COLUMNS (id BIGINT PATH '$.id')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id;

-- name: stranded_parents
-- Failed or cancelled jobs that queued jobs still depend on. A dependent enqueued in a
-- transaction that committed after its parent ended was missed by that parent's cascade,
-- which could not see it yet (nor could the enqueue see the parent's end): the periodic
-- recovery cancels it then, as the cascade would have. The parents are the distinct values of
-- ix_background_job_depends_on, read by a loose index scan, one probe per parent that has
-- dependents (100k dependents of one parent are one probe, not 100k).
SELECT p.id
FROM (SELECT DISTINCT k.depends_on AS id
      FROM background_job k FORCE INDEX (ix_background_job_depends_on)
      WHERE k.depends_on IS NOT NULL) AS p
STRAIGHT_JOIN job_summary s FORCE INDEX (PRIMARY) ON s.id = p.id
WHERE s.state IN ('Failed', 'Cancelled')
  -- a scalar subquery, a probe per parent (as EXISTS, MariaDB may materialize every
  -- dependent)
  AND (SELECT 1 FROM background_job j FORCE INDEX (ix_background_job_depends_on)
       WHERE j.depends_on = p.id AND j.state = 'Queued' LIMIT 1) IS NOT NULL;

-- name: release_dependents
-- Dependents still held whose parent has completed: enqueued in a transaction that committed
-- after the parent's completion, which could not see them (nor could the enqueue see the
-- completion), or skipped by it as locked. The periodic recovery lets them run; returns how
-- many. The parents are found as in stranded_parents, one probe each, and their held
-- dependents (ix_background_job_depends_on is (depends_on, parent_pending)) by a plain read,
-- which never waits for an application's uncommitted dependent; then they are locked by key,
-- skipping rows another transaction holds (left for the next time), and changed.
SELECT JSON_ARRAYAGG(l.id) INTO @asyncjobs_released FROM (
    SELECT b.id
    FROM (SELECT h.id
          FROM (SELECT DISTINCT k.depends_on AS id
                FROM background_job k FORCE INDEX (ix_background_job_depends_on)
                WHERE k.depends_on IS NOT NULL) AS p
          STRAIGHT_JOIN job_summary s FORCE INDEX (PRIMARY) ON s.id = p.id
          STRAIGHT_JOIN background_job h FORCE INDEX (ix_background_job_depends_on)
                ON h.depends_on = p.id AND h.parent_pending = 1
          WHERE s.state = 'Completed') AS r
    STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = r.id
    WHERE b.parent_pending = 1
    FOR UPDATE SKIP LOCKED
) AS l;
UPDATE JSON_TABLE(COALESCE(@asyncjobs_released, '[]'), '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
SET b.parent_pending = 0;

-- name: orphaned_dependents
-- Queued jobs whose parent has already failed or been cancelled (enqueued after it ended).
SELECT j.depends_on AS id FROM JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job j FORCE INDEX (PRIMARY) ON j.id = i.id
STRAIGHT_JOIN job_summary p FORCE INDEX (PRIMARY) ON p.id = j.depends_on
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
STRAIGHT_JOIN job_summary s FORCE INDEX (PRIMARY) ON s.id = i.id;

-- name: jobs_by_ref_ids
-- Jobs by their ref ids, with the node that holds each if it is still queued or running: an
-- insert whose reply was lost is recognised by its ref ids, creation time and holder.
SELECT s.id, s.ref_id, s.created_date, b.lease_owner
FROM JSON_TABLE(:ref_ids, '$[*]' COLUMNS (ref_id VARCHAR(255) PATH '$')) AS r
STRAIGHT_JOIN job_summary s FORCE INDEX (ux_job_summary_ref_id) ON s.ref_id = r.ref_id
LEFT JOIN background_job b ON b.id = s.id;

-- name: final_states
-- The state of jobs that reached a final state (or have no summary at all).
SELECT s.id, s.state FROM JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN job_summary s FORCE INDEX (PRIMARY) ON s.id = i.id
WHERE s.state IN ('Completed', 'Failed', 'Cancelled');

-- name: recent_durations
-- The last durations of a command on a worker, for progress estimates (<=> matches NULL too).
SELECT duration_ms FROM job_summary
WHERE command = :command AND worker <=> :worker
  AND state = 'Completed' AND duration_ms IS NOT NULL
ORDER BY id DESC LIMIT 10;

-- name: newest_job_id
-- The change watch's read (MySQL has no notifications): it moves when any process enqueues. One
-- look at the end of the primary key; and the count of requeues (a requeued job keeps its id).
SELECT MAX(id) AS id, (SELECT total FROM job_requeues WHERE id = 1) AS requeues
FROM background_job;

-- name: visible_job_ids
-- The change watch's other read: the jobs with an id above :after (the newest it has seen), at
-- most 1000, and which of :ids exist now (ids it saw skipped: enqueues that had not committed
-- yet, or never will). All by key, so it costs what newest_job_id costs while nothing moves.
-- The last row is the count of requeues (its id NULL).
SELECT b.id, NULL AS requeues FROM JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
UNION ALL
(SELECT id, NULL FROM background_job WHERE id > :after ORDER BY id LIMIT 1000)
UNION ALL
SELECT NULL, total FROM job_requeues WHERE id = 1;

-- name: cancel_requested_among
-- Which of :ids another process asked to cancel: an attempt that ended (failed, or stopped by a
-- shutdown) before its node heard of the request is cancelled, not retried.
SELECT b.id FROM JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
WHERE b.cancel_requested = 1;
