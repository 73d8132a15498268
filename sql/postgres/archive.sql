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

-- name: complete_and_claim_jobs
-- The finisher's and the dispatcher's statement: record many successful executions and claim
-- the next jobs, in one statement (atomic on an autocommitting connection: one round trip and
-- one commit where a separate finish and claim would cost two). A pure claim passes no
-- outcomes; a pure finish passes :limit 0.
--
-- Completing: each job this node still holds leaves the queue for the archive with its outcome
-- (the row is moved: DELETE ... RETURNING into INSERT) and its summary is updated. A job
-- missing from done_ids was taken over by another node (its lease ran out). The state test,
-- always true of a held job, lets the plan (generic: the number of ids is unknown) find the
-- jobs through the small ix_background_job_lease; without it, a queue of a few thousand rows
-- was read whole instead, 0.2 ms per statement. :outcomes is a JSON
-- array of {id, attempts, duration_ms, response, response_body, status, logs, notified_date}.
-- An outcome counts for the attempt it ended only (its attempts): written late, after the
-- job came back to this node and was claimed again, it is dropped (the job is not in done_ids).
--
-- Claiming: up to :limit runnable jobs in priority-then-age order, their summaries marked
-- Started. A job with a named worker is runnable only when no job of that worker is running and
-- it is the worker's oldest queued job; a job with depends_on only when its parent completed.
-- A job is due once its run_after has passed by the database's clock (now(), as leases are
-- timed), and next_due_in says in how many seconds the next delayed job will be (NULL: none,
-- or :limit 0). Every part of the statement reads one snapshot, taken before the jobs completed here left the
-- queue, so the claim counts them as finished explicitly (`done`): a named worker whose job
-- completes here gets its next job in the same round trip. Their dependents are claimed by the
-- next claim (dependents = 1 tells the caller to make one).
--
-- Differs from SQLite, which serialises writers: here claims from many processes run at once,
-- and FOR UPDATE SKIP LOCKED lets each take different rows without waiting.
--
-- Named workers: only a worker's head (its oldest queued job) is ever a candidate, and the head
-- is claimed through its row lock. That lock is what keeps two claims from running one worker's
-- jobs at the same time: a claim whose snapshot is older than another's commit either skips the
-- head (still locked), or locks it after that commit and the re-check of the newest row version
-- (state = 'Queued') rejects it; and in that older snapshot the head is still Queued, so no later
-- job of the worker qualifies either. A job only stops being Queued by being claimed (or
-- cancelled), so a worker's next job becomes a head only once its predecessor has left
-- 'Started'/'Executed' in a committed transaction, or in this very statement (`done`), whose
-- own commit makes both changes visible at once. We chose this over a per-worker
-- pg_try_advisory_xact_lock: the statement's snapshot is taken before any lock it acquires, so
-- an advisory lock alone cannot stop a claim acting on a snapshot from before the other claim
-- committed; the row lock's re-check can. It also needs no extra table and no extra round trip.
--
-- Heads are found with a loose index scan of ix_background_job_worker_queue: one probe per
-- worker with queued jobs, so a long queue of one worker costs one probe, not a scan. Unnamed
-- jobs never delayed come from ix_background_job_claim in claim order, and delayed ones that
-- are due from ix_background_job_due in due order (neither index holds a job not yet due, nor
-- a dependent whose parent has not completed, so a backlog of them costs the claim nothing); the better :limit of all
-- candidates are claimed. The due ones are taken by priority among the 1 000 that came due
-- first (a plain read; only those claimed are locked): a bound, so that a claim behind an
-- outage's worth of due retries reads 1 000 rows, not all of them.
WITH RECURSIVE outcome AS MATERIALIZED (
    SELECT * FROM jsonb_to_recordset(:outcomes::jsonb) AS o(
        id bigint, attempts integer, duration_ms bigint, response text, response_body text,
        status text, logs text, notified_date timestamptz)
),
done AS (
    DELETE FROM background_job b
    WHERE b.id = ANY (ARRAY(SELECT id FROM outcome)) AND b.lease_owner = :node
      AND b.attempts = (SELECT o.attempts FROM outcome o WHERE o.id = b.id)
      AND b.state IN ('Started', 'Executed')
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
-- Their dependents held for them may run now: back in the claim's indexes for the next claim
-- (this one reads the snapshot from before). Found in ix_background_job_held, which holds only
-- held jobs, so reading it for the completed ids costs less than any other plan (probed one by
-- one, as EXISTS or LIMIT 1, a plan that took all of one parent's 100k dependents as matching
-- every job scanned the table once per job). Rows another transaction holds are skipped, not
-- waited for: a cancel locks a dependent, then its parent, which this statement holds; the
-- recovery's release_dependents takes what is skipped here.
held AS MATERIALIZED (
    SELECT h.id FROM background_job h
    WHERE h.parent_pending AND h.depends_on = ANY (ARRAY(SELECT id FROM done))
    FOR UPDATE SKIP LOCKED
),
-- (found again through ix_background_job_held: by id alone, a plan for a queue not yet
-- analyzed read the whole table)
released AS (
    UPDATE background_job q SET parent_pending = false
    WHERE q.parent_pending AND q.depends_on = ANY (ARRAY(SELECT id FROM done))
      AND q.id = ANY (ARRAY(SELECT id FROM held))
),
completed_summaries AS (
    UPDATE job_summary s
    SET state = 'Completed', started_date = d.started_date, completed_date = :now,
        duration_ms = o.duration_ms, attempts = d.attempts, error_code = NULL,
        error_message = NULL
    FROM done d JOIN outcome o ON o.id = d.id
    WHERE s.id = d.id AND s.id = ANY (ARRAY(SELECT id FROM done))
),
heads(worker, id) AS (
    -- :skip_named = 1 leaves named workers out: a worker process draining a backlog looks at
    -- their heads every so often, not at every claim (a look probes every worker with jobs).
    (SELECT worker, id FROM background_job
     WHERE state = 'Queued' AND worker IS NOT NULL AND :limit > 0 AND :skip_named = 0
     ORDER BY worker, id LIMIT 1)
    UNION ALL
    SELECT next.worker, next.id
    FROM heads h
    CROSS JOIN LATERAL (
        SELECT b.worker, b.id FROM background_job b
        WHERE b.state = 'Queued' AND b.worker IS NOT NULL AND b.worker > h.worker
        ORDER BY b.worker, b.id LIMIT 1
    ) next
),
idle_heads AS (
    SELECT h.id FROM heads h
    WHERE NOT EXISTS (SELECT 1 FROM background_job r
                      WHERE r.worker = h.worker AND r.state IN ('Started', 'Executed')
                        AND r.id <> ALL (ARRAY(SELECT id FROM done)))
),
named AS MATERIALIZED (
    SELECT j.id, j.priority FROM background_job j
    WHERE j.id = ANY (ARRAY(SELECT id FROM idle_heads))
      AND j.state = 'Queued'
      AND (j.run_after IS NULL OR j.run_after <= now())
      AND (j.depends_on IS NULL
           OR (SELECT p.state FROM job_summary p WHERE p.id = j.depends_on) = 'Completed')
    ORDER BY j.priority DESC, j.id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
),
unnamed AS MATERIALIZED (
    SELECT j.id, j.priority FROM background_job j
    WHERE j.state = 'Queued' AND j.worker IS NULL AND j.run_after IS NULL AND NOT j.parent_pending
      AND :named_only = 0
      AND (j.depends_on IS NULL
           OR (SELECT p.state FROM job_summary p WHERE p.id = j.depends_on) = 'Completed')
    ORDER BY j.priority DESC, j.id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
),
due_window AS (
    SELECT j.id FROM background_job j
    WHERE j.state = 'Queued' AND j.worker IS NULL AND j.run_after IS NOT NULL
      AND NOT j.parent_pending AND j.run_after <= now() AND :named_only = 0
      AND (j.depends_on IS NULL
           OR (SELECT p.state FROM job_summary p WHERE p.id = j.depends_on) = 'Completed')
    ORDER BY j.run_after
    LIMIT 1000
),
due AS MATERIALIZED (
    SELECT j.id, j.priority FROM background_job j
    WHERE j.id = ANY (ARRAY(SELECT id FROM due_window))
      AND j.state = 'Queued' AND j.worker IS NULL AND j.run_after <= now()
    ORDER BY j.priority DESC, j.id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
),
-- The candidate sets are locked as they are read, so SKIP LOCKED moves past rows another claim
-- holds; the few locked here but not chosen stay Queued and are free again at commit.
chosen AS (
    SELECT c.id FROM (SELECT id, priority FROM named UNION ALL SELECT id, priority FROM unnamed
                      UNION ALL SELECT id, priority FROM due) c
    ORDER BY c.priority DESC, c.id
    LIMIT :limit
),
claimed AS (
    UPDATE background_job b
    SET state = 'Started', attempts = b.attempts + 1, started_date = :now,
        last_activity_date = :now, lease_owner = :node, cancel_requested = false
    FROM chosen
    WHERE b.id = chosen.id
    RETURNING b.*
),
claimed_summaries AS (
    UPDATE job_summary s
    SET state = c.state, started_date = c.started_date, completed_date = c.completed_date,
        duration_ms = c.duration_ms, attempts = c.attempts, error_code = c.error_code,
        error_message = c.error ->> 'message'
    FROM claimed c
    WHERE s.id = c.id AND s.id = ANY (ARRAY(SELECT id FROM claimed))
),
-- What the caller learns besides the claimed jobs: one row even when nothing was claimed.
report AS (
    SELECT (SELECT json_agg(id) FROM done)::text AS done_ids,
           -- dependents released here, which the next claim can take (a dependent enqueued
           -- by a version before migration 7 is not held: it waits for the next poll)
           (EXISTS (SELECT 1 FROM held))::int AS dependents,
           -- seconds until the next delayed job is due, by the database's clock (as the
           -- claim above judges run_after), so the caller can wake for it: one probe of
           -- ix_background_job_run_after
           CASE WHEN :limit > 0 THEN
               (SELECT EXTRACT(EPOCH FROM MIN(q.run_after) - now()) FROM background_job q
                WHERE q.state = 'Queued' AND q.run_after > now())::float8
           END AS next_due_in
)
SELECT r.done_ids, r.dependents, r.next_due_in, c.* FROM report r LEFT JOIN claimed c ON true;

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
-- Bring a failed or cancelled job back into the queue with the same id and a fresh retry budget,
-- and wake listening processes (as insert_jobs does).
-- :parent_pending marks a dependent whose parent has not completed, as the enqueue does:
-- it stays out of the claim's index until that completion (or the recovery) releases it.
WITH woken AS MATERIALIZED (
    SELECT pg_notify(left('asyncjobs.' || n.nspname, 63), '') FROM pg_namespace n
    WHERE n.oid = (SELECT relnamespace FROM pg_class WHERE oid = 'background_job'::regclass)
)
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
FROM failed_job, woken WHERE id = :id;

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

-- name: oldest_active_created
-- Retention keeps the month of the oldest job still in the queue: it is archived there when it
-- ends (and other processes, which know the month exists, would find its table gone); and the
-- month of the oldest parent a job in the queue depends on: that job runs once the parent's
-- summary says Completed, and reads the parent's archived row. Ids grow with creation, so the
-- first by key is the oldest, and the least depends_on the oldest parent, both found without a
-- scan. One row for each (none for what does not exist); the caller takes the older.
SELECT created_date FROM (SELECT created_date FROM background_job ORDER BY id LIMIT 1) AS a
UNION ALL
SELECT created_date FROM job_summary
WHERE id = (SELECT MIN(depends_on) FROM background_job WHERE depends_on IS NOT NULL);

-- name: delete_old_summaries
-- Retention: summaries of finished jobs created before the oldest kept month.
DELETE FROM job_summary
WHERE created_date < :before AND state IN ('Completed', 'Failed', 'Cancelled');
