-- The job lifecycle: enqueue, claim, finish, retry, cancel, read.
-- Lists of ids and of new jobs arrive as one JSON array parameter, so a batch is one statement.
-- Differs from SQLite throughout: an id list is read as
--     id = ANY (ARRAY(SELECT jsonb_array_elements_text(:ids::jsonb)::bigint))
-- which builds the array once, so each id is one index probe; `id IN (SELECT ... FROM
-- jsonb_array_elements_text(...))` may be planned as a hash join over the whole table.

-- name: insert_jobs
-- Enqueue a batch of jobs given as a JSON array, each with its summary row; ids follow the
-- array's order. One statement, so it is atomic even on an autocommitting connection (one
-- round trip per enqueue).
-- json_to_recordset types each field (timestamps parse from ISO text); it reads the text as
-- json, which is parsed a third faster than jsonb, and the rows keep the array's order. Empty
-- fields are left out of the JSON and read as NULL (hence the COALESCE for priority); args and
-- meta arrive as nested objects.
WITH inserted AS (
INSERT INTO background_job (
    parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date, created_by, request_type, command, request, request_body, user_id, state, retry_limit, timeout_secs, reply_to, args, meta, priority, parent_pending
)
SELECT
    j.parent_id, j.ref_id, j.worker, j.tag, j.batch_id, j.callback, j.depends_on, j.run_after,
    j.created_date, j.created_by, j.request_type, j.command, j.request, j.request_body,
    j.user_id, 'Queued', j.retry_limit, j.timeout_secs, j.reply_to, j.args,
    j.meta, COALESCE(j.priority, 0), COALESCE(j.parent_pending, false)
FROM ROWS FROM (json_to_recordset(:jobs::json) AS (
    parent_id bigint, ref_id text, worker text, tag text, batch_id text, callback text,
    depends_on bigint, run_after timestamptz, created_date timestamptz, created_by text,
    request_type text, command text, request text, request_body text, user_id text,
    retry_limit integer, timeout_secs double precision, reply_to text, args jsonb, meta jsonb,
    priority integer, parent_pending boolean
)) WITH ORDINALITY AS j(
    parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, retry_limit,
    timeout_secs, reply_to, args, meta, priority, parent_pending, ord
)
ORDER BY j.ord
RETURNING *
),
summaries AS (
INSERT INTO job_summary (id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, created_date, created_by, request_type, command, request, user_id, state, attempts)
SELECT id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, created_date, created_by, request_type, command, request, user_id, state, attempts
FROM inserted
),
-- Wake listening processes: once per statement (materialized), on the channel of the schema
-- the jobs went into ('asyncjobs.<schema>', what PostgresDialect.listen subscribes to).
-- NOTIFY is delivered at commit, so an enqueue that rolls back wakes nobody.
woken AS MATERIALIZED (
    SELECT pg_notify(left('asyncjobs.' || n.nspname, 63), '') FROM pg_namespace n
    WHERE n.oid = (SELECT relnamespace FROM pg_class WHERE oid = 'background_job'::regclass)
)
SELECT i.id, i.ref_id FROM inserted i, woken;

-- name: insert_job
-- insert_jobs for one job, given column by column (one job is how most enqueues come): no
-- JSON to parse. One statement, which wakes listeners as insert_jobs does.
WITH inserted AS (
INSERT INTO background_job (
    parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, state, retry_limit,
    timeout_secs, reply_to, args, meta, priority, parent_pending
)
VALUES (
    :parent_id, :ref_id, :worker, :tag, :batch_id, :callback, :depends_on, :run_after,
    :created_date, :created_by, :request_type, :command, :request, :request_body, :user_id,
    'Queued', :retry_limit, :timeout_secs, :reply_to, :args::jsonb, :meta::jsonb, :priority,
    :parent_pending
)
RETURNING *
),
summaries AS (
INSERT INTO job_summary (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, created_date,
    created_by, request_type, command, request, user_id, state, attempts
)
SELECT b.id, b.parent_id, b.ref_id, b.worker, b.tag, b.batch_id, b.callback, b.depends_on,
       b.created_date, b.created_by, b.request_type, b.command, b.request, b.user_id, b.state,
       b.attempts
FROM inserted b
),
woken AS MATERIALIZED (
    SELECT pg_notify(left('asyncjobs.' || n.nspname, 63), '') FROM pg_namespace n
    WHERE n.oid = (SELECT relnamespace FROM pg_class WHERE oid = 'background_job'::regclass)
)
SELECT i.id, i.ref_id FROM inserted i, woken;

-- name: insert_started_jobs
-- Enqueue jobs that :node starts at once: a process that executes jobs enqueued them and has
-- room, so they are inserted already claimed (Started, first attempt, leased), with their
-- summaries; only their ids come back (the caller knows the rest of each row). No round trip
-- for a claim, no wait for a wake-up. Only for jobs with no worker, dependency or delay (the
-- store checks). One statement, as above.
WITH inserted AS (
INSERT INTO background_job (
    parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date, created_by, request_type, command, request, request_body, user_id, state, retry_limit, timeout_secs, reply_to, args, meta, priority,
    attempts, started_date, last_activity_date, lease_owner
)
SELECT
    j.parent_id, j.ref_id, j.worker, j.tag, j.batch_id, j.callback, j.depends_on, j.run_after,
    j.created_date, j.created_by, j.request_type, j.command, j.request, j.request_body,
    j.user_id, 'Started', j.retry_limit, j.timeout_secs, j.reply_to, j.args,
    j.meta, COALESCE(j.priority, 0), 1, :now, :now, :node
FROM ROWS FROM (json_to_recordset(:jobs::json) AS (
    parent_id bigint, ref_id text, worker text, tag text, batch_id text, callback text,
    depends_on bigint, run_after timestamptz, created_date timestamptz, created_by text,
    request_type text, command text, request text, request_body text, user_id text,
    retry_limit integer, timeout_secs double precision, reply_to text, args jsonb, meta jsonb,
    priority integer
)) WITH ORDINALITY AS j(
    parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, retry_limit,
    timeout_secs, reply_to, args, meta, priority, ord
)
ORDER BY j.ord
RETURNING *
),
summaries AS (
INSERT INTO job_summary (id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, created_date, created_by, request_type, command, request, user_id, state, attempts, started_date)
SELECT id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, created_date, created_by, request_type, command, request, user_id, state, attempts, started_date
FROM inserted
)
SELECT id, ref_id FROM inserted;

-- name: insert_started_job
-- insert_started_jobs for one job, given column by column (one job is how most enqueues
-- come): no JSON to parse on either side. One statement.
WITH inserted AS (
INSERT INTO background_job (
    parent_id, ref_id, tag, batch_id, callback, created_date, created_by, request_type, command,
    request, request_body, user_id, state, retry_limit, timeout_secs, reply_to, args, meta,
    priority, attempts, started_date, last_activity_date, lease_owner
)
VALUES (
    :parent_id, :ref_id, :tag, :batch_id, :callback, :created_date, :created_by, :request_type,
    :command, :request, :request_body, :user_id, 'Started', :retry_limit, :timeout_secs,
    :reply_to, :args::jsonb, :meta::jsonb, :priority, 1, :now, :now, :node
)
RETURNING *
),
summaries AS (
INSERT INTO job_summary (id, parent_id, ref_id, tag, batch_id, callback, created_date, created_by, request_type, command, request, user_id, state, attempts, started_date)
SELECT id, parent_id, ref_id, tag, batch_id, callback, created_date, created_by, request_type, command, request, user_id, state, attempts, started_date
FROM inserted
)
SELECT id, ref_id FROM inserted;

-- name: mark_summaries
-- Copy the live state of jobs into their summaries.
UPDATE job_summary s
SET state = b.state, started_date = b.started_date, completed_date = b.completed_date,
    duration_ms = b.duration_ms, attempts = b.attempts, error_code = b.error_code,
    error_message = b.error ->> 'message'
FROM background_job b
WHERE b.id = s.id
  AND b.id = ANY (ARRAY(SELECT jsonb_array_elements_text(:ids::jsonb)::bigint));

-- name: set_outcome
-- Record how one execution ended; only the node holding the job may do it. A failure of a job
-- another process asked to cancel while it ran (before this node heard of it) ends Cancelled,
-- as its retry would have (see cancel_requested_among).
UPDATE background_job
SET state = CASE WHEN cancel_requested AND :state = 'Failed' THEN 'Cancelled' ELSE :state END,
    completed_date = :now, last_activity_date = :now, duration_ms = :duration_ms,
    response = :response, response_body = :response_body, error = :error::jsonb,
    error_code = CASE WHEN cancel_requested AND :state = 'Failed' THEN 'Cancelled'
                      ELSE :error_code END,
    progress = COALESCE(:progress::float8, progress),
    status = COALESCE(:status::text, status),
    notified_date = COALESCE(:notified_date::timestamptz, notified_date),
    logs = CASE WHEN :logs::text IS NULL THEN logs ELSE COALESCE(logs, '') || :logs::text END
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
    run_after = now() + :retry_in_us::bigint * interval '1 microsecond',
    error = :error::jsonb, error_code = :error_code,
    last_activity_date = :now, lease_owner = NULL,
    logs = CASE WHEN :logs::text IS NULL THEN logs ELSE COALESCE(logs, '') || :logs::text END
WHERE id = :id AND lease_owner = :node AND attempts = :attempts;

-- name: announce_requeued
-- Jobs went back to the queue under their old ids (a retry, a shutdown, a dead node's lease):
-- wake listening processes, as insert_jobs does (at commit; once per transaction however many).
SELECT pg_notify(left('asyncjobs.' || n.nspname, 63), '') FROM pg_namespace n
WHERE n.oid = (SELECT relnamespace FROM pg_class WHERE oid = 'background_job'::regclass);

-- name: update_progress
-- A running job's progress, status line and new log text (appended). :logs_at is how long the
-- writer holds the stored text to be before :logs: what is stored past that is a prefix of
-- :logs that an earlier write stored though its reply was lost, and is not appended again.
-- Only the node holding the job writes: one whose job was taken over (its lease lapsed) would
-- write into the next attempt's logs, whose own writes then start at the wrong offset.
UPDATE background_job
SET progress = COALESCE(:progress::float8, progress), status = COALESCE(:status::text, status),
    logs = CASE WHEN :logs::text IS NULL THEN logs
                ELSE COALESCE(logs, '') || substr(
                    :logs::text, GREATEST(length(COALESCE(logs, '')) - :logs_at::int, 0) + 1)
           END,
    last_activity_date = :now
WHERE id = :id AND lease_owner = :node;

-- name: cancel_queued
-- Cancel jobs that have not started; they are archived by the caller.
-- The jobs are locked first (in id order), and judged Queued by the version the lock returns:
-- the newest. Judged by the statement's snapshot, a job that a transaction still open was
-- putting back in the queue (a retry, the recovery) read as running, and request_cancel, which
-- waits for that transaction, then found it queued: the cancel touched neither, and was lost.
WITH locked AS (
    SELECT id, state FROM background_job
    WHERE id = ANY (ARRAY(SELECT jsonb_array_elements_text(:ids::jsonb)::bigint))
    ORDER BY id
    FOR UPDATE
)
UPDATE background_job b
SET state = 'Cancelled', completed_date = :now, last_activity_date = :now, error = :error::jsonb,
    error_code = 'Cancelled'
FROM locked l
WHERE b.id = l.id AND l.state = 'Queued'
RETURNING b.id;

-- name: request_cancel
-- Flag running jobs for cancellation; the node running each is told (or polls) and stops it.
-- Only those not flagged yet: a job counts as cancelled once, however often it is asked.
UPDATE background_job SET cancel_requested = true
WHERE id = ANY (ARRAY(SELECT jsonb_array_elements_text(:ids::jsonb)::bigint))
  AND state IN ('Started', 'Executed') AND NOT cancel_requested
RETURNING id, lease_owner;

-- name: held_jobs
-- The jobs leased to this node, and whether another process asked to cancel each: the node
-- stops those, and those it runs that are no longer its own (taken over by another process
-- after this one missed its lease, e.g. with its event loop blocked).
SELECT id, cancel_requested FROM background_job WHERE lease_owner = :node;

-- name: cancel_dependents
-- Cancel every queued job that depends, directly or transitively, on a failed or cancelled job.
-- The error names the ancestor that failed, however deep the dependent is.
-- The outer state check matters here (not in SQLite's single writer): a row changed by a
-- concurrent transaction is re-checked against its newest version.
WITH RECURSIVE doomed(id, ancestor) AS (
    SELECT j.id, p.id FROM background_job j
    JOIN job_summary p ON p.id = j.depends_on
    WHERE j.state = 'Queued' AND p.state IN ('Failed', 'Cancelled')
      AND j.depends_on = ANY (ARRAY(SELECT jsonb_array_elements_text(:ids::jsonb)::bigint))
    UNION
    SELECT j.id, d.ancestor FROM background_job j JOIN doomed d ON j.depends_on = d.id
    WHERE j.state = 'Queued'
),
ancestors AS (
    SELECT id, MIN(ancestor) AS ancestor FROM doomed GROUP BY id
)
UPDATE background_job b
SET state = 'Cancelled', completed_date = :now, last_activity_date = :now,
    error_code = 'DependencyFailed',
    error = jsonb_build_object(
        'message', 'cancelled because job ' || a.ancestor
                   || ' it depends on failed or was cancelled',
        'type', 'DependencyFailed', 'traceback', NULL)
FROM ancestors a
WHERE b.id = a.id AND b.state = 'Queued'
RETURNING b.id, b.created_date;

-- name: stranded_parents
-- Failed or cancelled jobs that queued jobs still depend on. A dependent enqueued in a
-- transaction that committed after its parent ended was missed by that parent's cascade,
-- which could not see it yet (nor could the enqueue see the parent's end): the periodic
-- recovery cancels it then, as the cascade would have. The parents are found by a loose scan
-- of ix_background_job_depends_on, one probe per parent that has dependents (100k dependents
-- of one parent are one probe, not 100k).
WITH RECURSIVE parents(id) AS (
    (SELECT depends_on FROM background_job WHERE depends_on IS NOT NULL
     ORDER BY depends_on LIMIT 1)
    UNION ALL
    SELECT (SELECT b.depends_on FROM background_job b
            WHERE b.depends_on IS NOT NULL AND b.depends_on > p.id
            ORDER BY b.depends_on LIMIT 1)
    FROM parents p WHERE p.id IS NOT NULL
)
-- (scalar subqueries, each a probe by key: joined, or as EXISTS, a plan for a table not yet
-- analyzed may read it whole)
SELECT p.id FROM parents p
WHERE (SELECT s.state FROM job_summary s WHERE s.id = p.id) IN ('Failed', 'Cancelled')
  AND (SELECT 1 FROM background_job j
       WHERE j.depends_on = p.id AND j.depends_on IS NOT NULL AND j.state = 'Queued'
       LIMIT 1) IS NOT NULL;

-- name: release_dependents
-- Dependents still held whose parent has completed: enqueued in a transaction that committed
-- after the parent's completion, which could not see them (nor could the enqueue see the
-- completion), or skipped by it as locked. The periodic recovery lets them run; returns how
-- many. The parents are found by a loose scan of ix_background_job_held (held jobs only), one
-- probe per parent; rows another transaction holds are skipped, for the next time.
WITH RECURSIVE parents(id) AS (
    (SELECT depends_on FROM background_job WHERE parent_pending ORDER BY depends_on LIMIT 1)
    UNION ALL
    SELECT (SELECT b.depends_on FROM background_job b
            WHERE b.parent_pending AND b.depends_on > p.id
            ORDER BY b.depends_on LIMIT 1)
    FROM parents p WHERE p.id IS NOT NULL
),
completed AS MATERIALIZED (
    SELECT p.id FROM parents p
    WHERE (SELECT s.state FROM job_summary s WHERE s.id = p.id) = 'Completed'
),
held AS MATERIALIZED (
    SELECT h.id FROM background_job h
    WHERE h.parent_pending AND h.depends_on = ANY (ARRAY(SELECT id FROM completed))
    FOR UPDATE SKIP LOCKED
)
UPDATE background_job j SET parent_pending = false
WHERE j.parent_pending AND j.depends_on = ANY (ARRAY(SELECT id FROM completed))
  AND j.id = ANY (ARRAY(SELECT id FROM held));

-- name: orphaned_dependents
-- Queued jobs whose parent has already failed or been cancelled (enqueued after it ended).
SELECT j.depends_on AS id FROM background_job j
JOIN job_summary p ON p.id = j.depends_on
WHERE j.id = ANY (ARRAY(SELECT jsonb_array_elements_text(:ids::jsonb)::bigint))
  AND p.state IN ('Failed', 'Cancelled');

-- name: select_job_ids
-- Active jobs by state and worker (either may be NULL: any).
SELECT id FROM background_job
WHERE (:state::text IS NULL OR state = :state::text)
  AND (:worker::text IS NULL OR worker = :worker::text)
ORDER BY id;

-- name: get_active_job
SELECT * FROM background_job WHERE id = :id;

-- name: get_summary
SELECT * FROM job_summary WHERE id = :id;

-- name: get_summary_by_ref_id
SELECT * FROM job_summary WHERE ref_id = :ref_id;

-- name: get_summaries
SELECT * FROM job_summary
WHERE id = ANY (ARRAY(SELECT jsonb_array_elements_text(:ids::jsonb)::bigint));

-- name: jobs_by_ref_ids
-- Jobs by their ref ids, with the node that holds each if it is still queued or running: an
-- insert whose reply was lost is recognised by its ref ids, creation time and holder.
SELECT s.id, s.ref_id, s.created_date, b.lease_owner
FROM job_summary s LEFT JOIN background_job b ON b.id = s.id
WHERE s.ref_id = ANY (ARRAY(SELECT jsonb_array_elements_text(:ref_ids::jsonb)));

-- name: final_states
-- The state of jobs that reached a final state (or have no summary at all).
SELECT id, state FROM job_summary
WHERE id = ANY (ARRAY(SELECT jsonb_array_elements_text(:ids::jsonb)::bigint))
  AND state IN ('Completed', 'Failed', 'Cancelled');

-- name: recent_durations
-- The last durations of a command on a worker, for progress estimates.
-- Differs from SQLite: read from the completed_job archive (its partitions' indexes merge in id
-- order), which keeps an index off job_summary and so off every enqueue.
SELECT duration_ms FROM completed_job
WHERE command = :command AND worker IS NOT DISTINCT FROM :worker::text
  AND duration_ms IS NOT NULL
ORDER BY id DESC LIMIT 10;

-- name: newest_job_id
-- The newest job's id, which moves when any process enqueues (the MySQL dialect's change watch
-- reads it; kept in every dialect so that each has the same queries).
SELECT MAX(id) AS id, 0 AS requeues FROM background_job;

-- name: visible_job_ids
-- The jobs with an id above :after, and those of :ids that exist (the MySQL dialect's change
-- watch reads it; kept in every dialect so that each has the same queries).
SELECT id, NULL::bigint AS requeues FROM background_job
WHERE id = ANY (ARRAY(SELECT jsonb_array_elements_text(:ids::jsonb)::bigint))
UNION ALL
(SELECT id, NULL FROM background_job WHERE id > :after ORDER BY id LIMIT 1000)
UNION ALL
SELECT NULL, 0;

-- name: cancel_requested_among
-- Which of :ids another process asked to cancel: an attempt that ended (failed, or stopped by a
-- shutdown) before its node heard of the request is cancelled, not retried.
SELECT id FROM background_job
WHERE id = ANY (ARRAY(SELECT jsonb_array_elements_text(:ids::jsonb)::bigint)) AND cancel_requested;
