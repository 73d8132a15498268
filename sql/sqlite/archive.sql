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

-- name: complete_and_claim_jobs
-- The finisher's and the dispatcher's query: record many successful executions and claim the
-- next jobs, as one transaction (the dialect runs the statements together, in one trip to its
-- thread). A pure claim passes no outcomes; a pure finish passes :limit 0.
--
-- Completing: each job this node still holds gets its outcome, is copied into the month's
-- archive, has its summary updated and leaves the queue. A job missing from done_ids was taken
-- over by another node (its lease ran out). :outcomes is a JSON array of {id, attempts, duration_ms,
-- response, response_body, status, logs, notified_date}. The outcomes are read from the JSON
-- once (a materialized CTE): joined directly, json_each would be parsed again for every row of
-- the queue it is compared with.
-- An outcome counts for the attempt it ended only (its attempts): written late, after the
-- job came back to this node and was claimed again, it is dropped (the job is not in done_ids).
--
-- Claiming: up to :limit runnable jobs in priority-then-age order, their summaries marked
-- Started. A job with a named worker is runnable only when no job of that worker is running and
-- it is the worker's oldest queued job (its head); a job with depends_on only when its parent
-- completed; a job is due once its run_after has passed (:now: every process reads this
-- machine's clock), and next_due_in says in how many seconds the next delayed job will be
-- (NULL: none, or :limit 0). Heads are found per worker and jobs without a worker from their
-- own index, so a long queue of one worker costs one probe, not a walk. The claim runs after
-- the completions, so a named worker whose job completed here is idle for it. SQLite
-- serialises writers, so the claim is atomic across processes. Claimed jobs are found again by
-- node and claim time (:now is unique per call of a node).
--
-- The live row is never updated first: it is about to go, and an UPDATE would rewrite it and
-- its indexes for nothing. The archive row is written with the outcome applied, the summary
-- marked, and the row deleted, all picked by the same test (held by this node and running),
-- and then the claim runs. The jobs completed here are found again in the archive by their completion
-- time (:now, as above).
WITH o AS MATERIALIZED (
    SELECT json_extract(value, '$.id') AS id,
           json_extract(value, '$.attempts') AS attempts,
           json_extract(value, '$.duration_ms') AS duration_ms,
           json_extract(value, '$.response') AS response,
           json_extract(value, '$.response_body') AS response_body,
           json_extract(value, '$.status') AS status,
           json_extract(value, '$.logs') AS logs,
           json_extract(value, '$.notified_date') AS notified_date
    FROM json_each(:outcomes)
)
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
    b.request_body, b.user_id, o.response, o.response_body, 'Completed', b.started_date, :now,
    COALESCE(o.notified_date, b.notified_date), b.retry_limit, b.attempts, o.duration_ms,
    b.timeout_secs, 1.0, COALESCE(o.status, b.status),
    CASE WHEN o.logs IS NULL THEN b.logs ELSE COALESCE(b.logs, '') || o.logs END,
    :now, b.reply_to, NULL, NULL, b.args, b.meta, b.priority
FROM o JOIN background_job b ON b.id = o.id
WHERE b.lease_owner = :node AND b.attempts = o.attempts AND b.state IN ('Started', 'Executed');
UPDATE job_summary
SET state = 'Completed', started_date = a.started_date, completed_date = :now,
    duration_ms = a.duration_ms, attempts = a.attempts, error_code = NULL, error_message = NULL
FROM completed_job_{month} a
WHERE a.id = job_summary.id AND a.id IN (SELECT json_extract(value, '$.id') FROM json_each(:outcomes))
  AND a.completed_date = :now;
DELETE FROM background_job
WHERE id IN (SELECT json_extract(value, '$.id') FROM json_each(:outcomes))
  AND (id, attempts) IN (SELECT json_extract(value, '$.id'), json_extract(value, '$.attempts')
                         FROM json_each(:outcomes))
  AND lease_owner = :node AND state IN ('Started', 'Executed');
-- Their dependents held for them may run now, and the claim below takes them (found in
-- ix_background_job_held, which holds only held jobs).
UPDATE background_job SET parent_pending = 0
WHERE parent_pending = 1
  AND depends_on IN (SELECT id FROM completed_job_{month}
                     WHERE id IN (SELECT json_extract(value, '$.id') FROM json_each(:outcomes))
                       AND completed_date = :now);
WITH RECURSIVE workers(name) AS (
    -- :skip_named = 1 leaves named workers out: a worker process draining a backlog looks at
    -- their heads every so often, not at every claim (a look probes every worker with jobs).
    -- every named worker with jobs, one index probe each (a loose scan of
    -- ix_background_job_worker), never a walk of a worker's queue
    SELECT MIN(worker) FROM background_job
    WHERE worker IS NOT NULL AND :limit > 0 AND :skip_named = 0
    UNION ALL
    SELECT (SELECT MIN(b.worker) FROM background_job b WHERE b.worker > w.name)
    FROM workers w WHERE w.name IS NOT NULL
),
heads(id) AS (
    -- each idle worker's oldest queued job
    SELECT (SELECT e.id FROM background_job e
            WHERE e.worker = w.name AND e.state = 'Queued' ORDER BY e.id LIMIT 1)
    FROM workers w
    WHERE w.name IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM background_job r
                      WHERE r.worker = w.name AND r.state IN ('Started', 'Executed'))
),
candidates(id, priority) AS (
    SELECT j.id, j.priority FROM heads h JOIN background_job j ON j.id = h.id
    WHERE (j.run_after IS NULL OR j.run_after <= :now)
      AND (j.depends_on IS NULL OR EXISTS (
            SELECT 1 FROM job_summary p WHERE p.id = j.depends_on AND p.state = 'Completed'))
    UNION ALL
    SELECT * FROM (
        -- jobs without a worker never delayed, straight from ix_background_job_claim in claim
        -- order
        SELECT j.id, j.priority FROM background_job j
        WHERE j.state = 'Queued' AND j.worker IS NULL AND j.run_after IS NULL
          AND j.parent_pending = 0 AND :named_only = 0
          AND (j.depends_on IS NULL OR EXISTS (
                SELECT 1 FROM job_summary p WHERE p.id = j.depends_on AND p.state = 'Completed'))
        ORDER BY j.priority DESC, j.id
        LIMIT :limit
    )
    UNION ALL
    SELECT * FROM (
        -- delayed ones (and retries) that are due, from ix_background_job_due in due order:
        -- neither index holds a job not yet due, nor a dependent whose parent has not
        -- completed, so a backlog of them costs the claim nothing;
        -- by priority among the 1 000 that came due first (a bound: a claim behind an outage's
        -- worth of due retries reads 1 000 rows, not all of them)
        SELECT w.id, w.priority FROM (
            SELECT j.id, j.priority FROM background_job j
            WHERE j.state = 'Queued' AND j.worker IS NULL AND j.run_after IS NOT NULL
              AND j.parent_pending = 0 AND j.run_after <= :now AND :named_only = 0
              AND (j.depends_on IS NULL OR EXISTS (
                    SELECT 1 FROM job_summary p
                    WHERE p.id = j.depends_on AND p.state = 'Completed'))
            ORDER BY j.run_after
            LIMIT 1000
        ) AS w
        ORDER BY w.priority DESC, w.id
        LIMIT :limit
    )
)
UPDATE background_job
SET state = 'Started', attempts = attempts + 1, started_date = :now,
    last_activity_date = :now, lease_owner = :node, cancel_requested = 0
WHERE id IN (SELECT id FROM candidates ORDER BY priority DESC, id LIMIT :limit);
UPDATE job_summary
SET state = b.state, started_date = b.started_date, completed_date = b.completed_date,
    duration_ms = b.duration_ms, attempts = b.attempts, error_code = b.error_code,
    error_message = json_extract(b.error, '$.message')
FROM background_job b
WHERE b.id = job_summary.id AND b.lease_owner = :node AND b.started_date = :now
  AND b.state = 'Started';
WITH done AS (
    SELECT id FROM completed_job_{month}
    WHERE id IN (SELECT json_extract(value, '$.id') FROM json_each(:outcomes))
      AND completed_date = :now
),
report AS (
    SELECT (SELECT json_group_array(id) FROM done WHERE id IS NOT NULL HAVING count(*) > 0)
               AS done_ids,
           EXISTS (SELECT 1 FROM background_job q
                   WHERE q.depends_on IN (SELECT id FROM done) AND q.state = 'Queued')
               AS dependents,
           -- seconds until the next delayed job is due, so the caller can wake for it: one
           -- probe of ix_background_job_run_after
           CASE WHEN :limit > 0 THEN
               (SELECT (julianday(MIN(q.run_after)) - julianday(:now)) * 86400.0
                FROM background_job q WHERE q.state = 'Queued' AND q.run_after > :now)
           END AS next_due_in
)
SELECT r.done_ids, r.dependents, r.next_due_in, b.* FROM report r
LEFT JOIN background_job b
       ON b.lease_owner = :node AND b.started_date = :now AND b.state = 'Started';

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
DELETE FROM failed_job_{month} WHERE id = :id;

-- name: drop_archive
-- Retention: a month goes as a unit.
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
SELECT created_date FROM (SELECT created_date FROM background_job ORDER BY id LIMIT 1)
UNION ALL
SELECT created_date FROM job_summary
WHERE id = (SELECT MIN(depends_on) FROM background_job WHERE depends_on IS NOT NULL);

-- name: delete_old_summaries
-- Retention: summaries of finished jobs created before the oldest kept month.
DELETE FROM job_summary
WHERE created_date < :before AND state IN ('Completed', 'Failed', 'Cancelled');
