-- The admin UI's reads. Every filter is a bound parameter; NULL means "any".
-- List queries share one parameter set: state, command, request_type, worker, tag, batch_id,
-- ref_id, created_by, user_id, from_date, to_date, q (a lower-case LIKE pattern escaped with
-- '!'), limit, offset. The dashboard looks at jobs created since :since (the last 24 hours),
-- which the created_date index bounds.
-- As on SQLite, the archives are one table pair per month ({month} picks it). The list queries
-- filter on optional parameters; OPTION (RECOMPILE) plans each call for the filters it uses.
-- The columns use a binary collation, so free text compares LOWER()ed. Error messages are read
-- with OPENJSON (nvarchar(max); JSON_VALUE stops at 4000 characters).

-- name: admin_active_counts
-- The live queue by state; delayed = queued jobs whose run_after is still ahead.
SELECT state, COUNT(*) AS total,
       SUM(CASE WHEN run_after > SYSUTCDATETIME() THEN 1 ELSE 0 END) AS delayed_jobs
FROM background_job
GROUP BY state;

-- name: admin_recent_counts
-- Jobs created since :since, by state (the summary keeps every job, active or archived).
SELECT state, COUNT(*) AS total
FROM job_summary
WHERE created_date >= :since
GROUP BY state;

-- name: admin_throughput
-- Finished jobs per hour of completion ('YYYY-MM-DD HH', UTC) and final state: style 120 is
-- 'yyyy-mm-dd hh:mi:ss', cut after the hour.
SELECT CONVERT(nchar(13), completed_date, 120) AS bucket, state, COUNT(*) AS total
FROM job_summary
WHERE created_date >= :since AND completed_date IS NOT NULL
  AND state IN ('Completed', 'Failed', 'Cancelled')
GROUP BY CONVERT(nchar(13), completed_date, 120), state;

-- name: admin_command_stats
-- Outcomes and durations per command (an API job's name is its request type). p95 is the
-- nearest-rank percentile: the smallest duration whose rank reaches 95% of the count
-- (PERCENTILE_DISC is only a window function in T-SQL). The average is taken in float: AVG of
-- a bigint is a bigint.
WITH done AS (
    SELECT COALESCE(command, request) AS name, request_type, state, duration_ms
    FROM job_summary
    WHERE created_date >= :since AND state IN ('Completed', 'Failed', 'Cancelled')
),
ranked AS (
    SELECT name, duration_ms,
           ROW_NUMBER() OVER (PARTITION BY name ORDER BY duration_ms) AS row_no,
           COUNT(*) OVER (PARTITION BY name) AS counted
    FROM done
    WHERE state = 'Completed' AND duration_ms IS NOT NULL
),
p95 AS (
    SELECT name, MIN(duration_ms) AS p95_ms FROM ranked
    WHERE row_no >= 0.95 * counted
    GROUP BY name
)
SELECT TOP (200) d.name, MIN(d.request_type) AS request_type,
       SUM(CASE WHEN d.state = 'Completed' THEN 1 ELSE 0 END) AS completed,
       SUM(CASE WHEN d.state = 'Failed' THEN 1 ELSE 0 END) AS failed,
       SUM(CASE WHEN d.state = 'Cancelled' THEN 1 ELSE 0 END) AS cancelled,
       AVG(CASE WHEN d.state = 'Completed' THEN CAST(d.duration_ms AS float) END) AS avg_ms,
       MAX(p.p95_ms) AS p95_ms
FROM done AS d
LEFT JOIN p95 AS p ON p.name = d.name
GROUP BY d.name
ORDER BY COUNT(*) DESC, d.name;

-- name: admin_worker_stats
-- The same per named worker; jobs without one are grouped under NULL.
WITH done AS (
    SELECT worker AS name, state, duration_ms
    FROM job_summary
    WHERE created_date >= :since AND state IN ('Completed', 'Failed', 'Cancelled')
),
ranked AS (
    SELECT name, duration_ms,
           ROW_NUMBER() OVER (PARTITION BY name ORDER BY duration_ms) AS row_no,
           COUNT(*) OVER (PARTITION BY name) AS counted
    FROM done
    WHERE state = 'Completed' AND duration_ms IS NOT NULL
),
p95 AS (
    SELECT name, MIN(duration_ms) AS p95_ms FROM ranked
    WHERE row_no >= 0.95 * counted
    GROUP BY name
)
SELECT TOP (200) d.name,
       SUM(CASE WHEN d.state = 'Completed' THEN 1 ELSE 0 END) AS completed,
       SUM(CASE WHEN d.state = 'Failed' THEN 1 ELSE 0 END) AS failed,
       SUM(CASE WHEN d.state = 'Cancelled' THEN 1 ELSE 0 END) AS cancelled,
       AVG(CASE WHEN d.state = 'Completed' THEN CAST(d.duration_ms AS float) END) AS avg_ms,
       MAX(p.p95_ms) AS p95_ms
FROM done AS d
LEFT JOIN p95 AS p ON (p.name = d.name OR (p.name IS NULL AND d.name IS NULL))
GROUP BY d.name
ORDER BY COUNT(*) DESC, d.name;

-- name: admin_active_by_command
SELECT COALESCE(command, request) AS name, MIN(request_type) AS request_type,
       SUM(CASE WHEN state = 'Queued' THEN 1 ELSE 0 END) AS queued,
       SUM(CASE WHEN state IN ('Started', 'Executed') THEN 1 ELSE 0 END) AS running
FROM background_job
GROUP BY COALESCE(command, request);

-- name: admin_active_by_worker
SELECT worker AS name,
       SUM(CASE WHEN state = 'Queued' THEN 1 ELSE 0 END) AS queued,
       SUM(CASE WHEN state IN ('Started', 'Executed') THEN 1 ELSE 0 END) AS running
FROM background_job
GROUP BY worker;

-- name: admin_running
-- Jobs executing now, oldest first.
SELECT TOP (:limit) id, ref_id, request_type, command, request, worker, tag, batch_id,
       created_date, started_date, last_activity_date, attempts, retry_limit, timeout_secs,
       progress, status, state, lease_owner, cancel_requested
FROM background_job
WHERE state IN ('Started', 'Executed')
ORDER BY started_date, id;

-- name: admin_queued
-- Queued jobs in claim order, with what each waits for: its run_after, its parent's state, the
-- job its named worker is running, and the job ahead of it on that worker.
SELECT TOP (:limit) j.id, j.ref_id, j.request_type, j.command, j.request, j.worker, j.tag,
       j.batch_id, j.created_date, j.run_after, j.depends_on, j.priority, j.attempts,
       j.retry_limit, j.error_code, j.state,
       p.state AS parent_state,
       -- still ahead by the clock the claim judges it by
       CASE WHEN j.run_after > SYSUTCDATETIME() THEN 1 ELSE 0 END AS is_delayed,
       (SELECT MIN(r.id) FROM background_job AS r
        WHERE j.worker IS NOT NULL AND r.worker = j.worker
          AND r.state IN ('Started', 'Executed')) AS worker_running_id,
       (SELECT MAX(e.id) FROM background_job AS e
        WHERE j.worker IS NOT NULL AND e.worker = j.worker AND e.state = 'Queued'
          AND e.id < j.id) AS worker_ahead_id
FROM background_job AS j
LEFT JOIN job_summary AS p ON p.id = j.depends_on
WHERE j.state = 'Queued'
ORDER BY j.priority DESC, j.id;

-- name: admin_list_summary
-- History across every month: the summary rows matching the filters, newest first.
SELECT id, ref_id, request_type, command, request, worker, tag, batch_id, parent_id,
       depends_on, callback, created_by, user_id, state, created_date, started_date,
       completed_date, duration_ms, attempts, error_code, error_message
FROM job_summary
WHERE (:state IS NULL OR state = :state)
  AND (:command IS NULL OR command = :command OR (command IS NULL AND request = :command))
  AND (:request_type IS NULL OR request_type = :request_type)
  AND (:worker IS NULL OR worker = :worker)
  AND (:tag IS NULL OR tag = :tag)
  AND (:batch_id IS NULL OR batch_id = :batch_id)
  AND (:ref_id IS NULL OR ref_id = :ref_id)
  AND (:created_by IS NULL OR created_by = :created_by)
  AND (:user_id IS NULL OR user_id = :user_id)
  AND (:from_date IS NULL OR created_date >= :from_date)
  AND (:to_date IS NULL OR created_date < :to_date)
  AND (:q IS NULL OR LOWER(ref_id) LIKE :q ESCAPE '!' OR LOWER(command) LIKE :q ESCAPE '!'
       OR LOWER(request) LIKE :q ESCAPE '!' OR LOWER(tag) LIKE :q ESCAPE '!'
       OR LOWER(batch_id) LIKE :q ESCAPE '!' OR LOWER(error_message) LIKE :q ESCAPE '!')
ORDER BY id DESC
OFFSET :offset ROWS FETCH NEXT :limit ROWS ONLY
OPTION (RECOMPILE);

-- name: admin_list_completed
-- One month's completed jobs ({month} picks the table; :from_date/:to_date lie inside it).
SELECT id, ref_id, request_type, command, request, worker, tag, batch_id, parent_id,
       depends_on, callback, created_by, user_id, state, created_date, started_date,
       completed_date, duration_ms, attempts, error_code, e.message AS error_message
FROM completed_job_{month}
OUTER APPLY OPENJSON(error) WITH (message nvarchar(max) '$.message') AS e
WHERE (:state IS NULL OR state = :state)
  AND (:command IS NULL OR command = :command OR (command IS NULL AND request = :command))
  AND (:request_type IS NULL OR request_type = :request_type)
  AND (:worker IS NULL OR worker = :worker)
  AND (:tag IS NULL OR tag = :tag)
  AND (:batch_id IS NULL OR batch_id = :batch_id)
  AND (:ref_id IS NULL OR ref_id = :ref_id)
  AND (:created_by IS NULL OR created_by = :created_by)
  AND (:user_id IS NULL OR user_id = :user_id)
  AND (:from_date IS NULL OR created_date >= :from_date)
  AND (:to_date IS NULL OR created_date < :to_date)
  AND (:q IS NULL OR LOWER(ref_id) LIKE :q ESCAPE '!' OR LOWER(command) LIKE :q ESCAPE '!'
       OR LOWER(request) LIKE :q ESCAPE '!' OR LOWER(tag) LIKE :q ESCAPE '!'
       OR LOWER(batch_id) LIKE :q ESCAPE '!' OR LOWER(request_body) LIKE :q ESCAPE '!')
ORDER BY id DESC
OFFSET :offset ROWS FETCH NEXT :limit ROWS ONLY
OPTION (RECOMPILE);

-- name: admin_list_failed
-- One month's failed and cancelled jobs.
SELECT id, ref_id, request_type, command, request, worker, tag, batch_id, parent_id,
       depends_on, callback, created_by, user_id, state, created_date, started_date,
       completed_date, duration_ms, attempts, error_code, e.message AS error_message
FROM failed_job_{month}
OUTER APPLY OPENJSON(error) WITH (message nvarchar(max) '$.message') AS e
WHERE (:state IS NULL OR state = :state)
  AND (:command IS NULL OR command = :command OR (command IS NULL AND request = :command))
  AND (:request_type IS NULL OR request_type = :request_type)
  AND (:worker IS NULL OR worker = :worker)
  AND (:tag IS NULL OR tag = :tag)
  AND (:batch_id IS NULL OR batch_id = :batch_id)
  AND (:ref_id IS NULL OR ref_id = :ref_id)
  AND (:created_by IS NULL OR created_by = :created_by)
  AND (:user_id IS NULL OR user_id = :user_id)
  AND (:from_date IS NULL OR created_date >= :from_date)
  AND (:to_date IS NULL OR created_date < :to_date)
  AND (:q IS NULL OR LOWER(ref_id) LIKE :q ESCAPE '!' OR LOWER(command) LIKE :q ESCAPE '!'
       OR LOWER(request) LIKE :q ESCAPE '!' OR LOWER(tag) LIKE :q ESCAPE '!'
       OR LOWER(batch_id) LIKE :q ESCAPE '!' OR LOWER(request_body) LIKE :q ESCAPE '!'
       OR LOWER(e.message) LIKE :q ESCAPE '!')
ORDER BY id DESC
OFFSET :offset ROWS FETCH NEXT :limit ROWS ONLY
OPTION (RECOMPILE);

-- name: admin_related
-- Jobs that depend on a job or name it as their parent.
SELECT TOP (100) id, ref_id, request_type, command, request, worker, tag, parent_id,
       depends_on, state, created_date, completed_date, duration_ms, error_code, error_message
FROM job_summary
WHERE depends_on = :id OR parent_id = :id
ORDER BY id;

-- name: admin_job_live
-- A running job's progress and the log text past :log_offset characters, for the live panel.
-- DATALENGTH / 2 counts UTF-16 code units, as SUBSTRING does; LEN would drop trailing spaces.
-- The start is counted in BIGINT: an int offset of 2**31-1 plus one would overflow.
SELECT id, state, progress, status, attempts, started_date, last_activity_date,
       cancel_requested, DATALENGTH(logs) / 2 AS log_length,
       SUBSTRING(logs, CAST(:log_offset AS BIGINT) + 1, 2147483647) AS log_tail
FROM background_job
WHERE id = :id;

-- name: admin_scheduled_tasks
-- Recurring tasks with the state of the last job each enqueued (options tell whether the admin
-- can run one now).
SELECT t.id, t.name, t.schedule, t.request_type, t.command, t.request, t.options, t.enabled,
       t.last_run, t.next_run, t.last_job_id, t.created_date, t.modified_date,
       s.state AS last_job_state, s.duration_ms AS last_job_duration_ms
FROM scheduled_task AS t
LEFT JOIN job_summary AS s ON s.id = t.last_job_id
ORDER BY t.name;

-- name: admin_nodes
-- Processes that run jobs, with their lease, alive by the clock that times leases.
SELECT id, host, pid, started_date, lease_expires,
       CASE WHEN lease_expires > SYSUTCDATETIME() THEN 1 ELSE 0 END AS alive
FROM job_node
ORDER BY started_date, id;
