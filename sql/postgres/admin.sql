-- The admin UI's reads. Every filter is a bound parameter; NULL means "any".
-- List queries share one parameter set: state, command, request_type, worker, tag, batch_id,
-- ref_id, created_by, user_id, from_date, to_date, q (a lower-case LIKE pattern escaped with
-- '!'), limit, offset. The dashboard looks at jobs created since :since (the last 24 hours),
-- which the created_date index bounds.
-- Differs from SQLite: the archives are partitioned tables, and :from_date/:to_date (always
-- inside one month for them) prune the scan to that month's partition.

-- name: admin_active_counts
-- The live queue by state; delayed = queued jobs whose run_after is still ahead.
SELECT state, COUNT(*) AS total, COUNT(*) FILTER (WHERE run_after > now()) AS delayed_jobs
FROM background_job
GROUP BY state;

-- name: admin_recent_counts
-- Jobs created since :since, by state (the summary keeps every job, active or archived).
SELECT state, COUNT(*) AS total
FROM job_summary
WHERE created_date >= :since
GROUP BY state;

-- name: admin_throughput
-- Finished jobs per hour of completion ('YYYY-MM-DD HH', UTC) and final state.
SELECT to_char(completed_date AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24') AS bucket, state,
       COUNT(*) AS total
FROM job_summary
WHERE created_date >= :since AND completed_date IS NOT NULL
  AND state IN ('Completed', 'Failed', 'Cancelled')
GROUP BY 1, state;

-- name: admin_command_stats
-- Outcomes and durations per command (an API job's name is its request type).
-- Differs from SQLite: percentile_disc gives the nearest-rank p95 directly.
SELECT COALESCE(command, request) AS name, MIN(request_type) AS request_type,
       COUNT(*) FILTER (WHERE state = 'Completed') AS completed,
       COUNT(*) FILTER (WHERE state = 'Failed') AS failed,
       COUNT(*) FILTER (WHERE state = 'Cancelled') AS cancelled,
       (AVG(duration_ms) FILTER (WHERE state = 'Completed'))::float8 AS avg_ms,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms)
           FILTER (WHERE state = 'Completed' AND duration_ms IS NOT NULL) AS p95_ms
FROM job_summary
WHERE created_date >= :since AND state IN ('Completed', 'Failed', 'Cancelled')
GROUP BY COALESCE(command, request)
ORDER BY COUNT(*) DESC, 1
LIMIT 200;

-- name: admin_worker_stats
-- The same per named worker; jobs without one are grouped under NULL.
SELECT worker AS name,
       COUNT(*) FILTER (WHERE state = 'Completed') AS completed,
       COUNT(*) FILTER (WHERE state = 'Failed') AS failed,
       COUNT(*) FILTER (WHERE state = 'Cancelled') AS cancelled,
       (AVG(duration_ms) FILTER (WHERE state = 'Completed'))::float8 AS avg_ms,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms)
           FILTER (WHERE state = 'Completed' AND duration_ms IS NOT NULL) AS p95_ms
FROM job_summary
WHERE created_date >= :since AND state IN ('Completed', 'Failed', 'Cancelled')
GROUP BY worker
ORDER BY COUNT(*) DESC, 1
LIMIT 200;

-- name: admin_active_by_command
SELECT COALESCE(command, request) AS name, MIN(request_type) AS request_type,
       COUNT(*) FILTER (WHERE state = 'Queued') AS queued,
       COUNT(*) FILTER (WHERE state IN ('Started', 'Executed')) AS running
FROM background_job
GROUP BY COALESCE(command, request);

-- name: admin_active_by_worker
SELECT worker AS name,
       COUNT(*) FILTER (WHERE state = 'Queued') AS queued,
       COUNT(*) FILTER (WHERE state IN ('Started', 'Executed')) AS running
FROM background_job
GROUP BY worker;

-- name: admin_running
-- Jobs executing now, oldest first.
SELECT id, ref_id, request_type, command, request, worker, tag, batch_id, created_date,
       started_date, last_activity_date, attempts, retry_limit, timeout_secs, progress, status,
       state, lease_owner, cancel_requested
FROM background_job
WHERE state IN ('Started', 'Executed')
ORDER BY started_date, id
LIMIT :limit;

-- name: admin_queued
-- Queued jobs in claim order, with what each waits for: its run_after, its parent's state, the
-- job its named worker is running, and the job ahead of it on that worker.
SELECT j.id, j.ref_id, j.request_type, j.command, j.request, j.worker, j.tag, j.batch_id,
       j.created_date, j.run_after, j.depends_on, j.priority, j.attempts, j.retry_limit,
       j.error_code, j.state,
       p.state AS parent_state,
       -- still ahead by the clock the claim judges it by
       COALESCE(j.run_after > now(), false) AS is_delayed,
       (SELECT MIN(r.id) FROM background_job r
        WHERE j.worker IS NOT NULL AND r.worker = j.worker
          AND r.state IN ('Started', 'Executed')) AS worker_running_id,
       (SELECT MAX(e.id) FROM background_job e
        WHERE j.worker IS NOT NULL AND e.worker = j.worker AND e.state = 'Queued'
          AND e.id < j.id) AS worker_ahead_id
FROM background_job j
LEFT JOIN job_summary p ON p.id = j.depends_on
WHERE j.state = 'Queued'
ORDER BY j.priority DESC, j.id
LIMIT :limit;

-- name: admin_list_summary
-- History across every month: the summary rows matching the filters, newest first.
SELECT id, ref_id, request_type, command, request, worker, tag, batch_id, parent_id,
       depends_on, callback, created_by, user_id, state, created_date, started_date,
       completed_date, duration_ms, attempts, error_code, error_message
FROM job_summary
WHERE (:state::text IS NULL OR state = :state)
  AND (:command::text IS NULL OR command = :command
       OR (command IS NULL AND request = :command))
  AND (:request_type::text IS NULL OR request_type = :request_type)
  AND (:worker::text IS NULL OR worker = :worker)
  AND (:tag::text IS NULL OR tag = :tag)
  AND (:batch_id::text IS NULL OR batch_id = :batch_id)
  AND (:ref_id::text IS NULL OR ref_id = :ref_id)
  AND (:created_by::text IS NULL OR created_by = :created_by)
  AND (:user_id::text IS NULL OR user_id = :user_id)
  AND (:from_date::timestamptz IS NULL OR created_date >= :from_date)
  AND (:to_date::timestamptz IS NULL OR created_date < :to_date)
  AND (:q::text IS NULL OR LOWER(ref_id) LIKE :q ESCAPE '!' OR LOWER(command) LIKE :q ESCAPE '!'
       OR LOWER(request) LIKE :q ESCAPE '!' OR LOWER(tag) LIKE :q ESCAPE '!'
       OR LOWER(batch_id) LIKE :q ESCAPE '!' OR LOWER(error_message) LIKE :q ESCAPE '!')
ORDER BY id DESC
LIMIT :limit OFFSET :offset;

-- name: admin_list_completed
-- One month's completed jobs: :from_date and :to_date lie inside the month and prune to it.
SELECT id, ref_id, request_type, command, request, worker, tag, batch_id, parent_id,
       depends_on, callback, created_by, user_id, state, created_date, started_date,
       completed_date, duration_ms, attempts, error_code, error ->> 'message' AS error_message
FROM completed_job
WHERE (:state::text IS NULL OR state = :state)
  AND (:command::text IS NULL OR command = :command
       OR (command IS NULL AND request = :command))
  AND (:request_type::text IS NULL OR request_type = :request_type)
  AND (:worker::text IS NULL OR worker = :worker)
  AND (:tag::text IS NULL OR tag = :tag)
  AND (:batch_id::text IS NULL OR batch_id = :batch_id)
  AND (:ref_id::text IS NULL OR ref_id = :ref_id)
  AND (:created_by::text IS NULL OR created_by = :created_by)
  AND (:user_id::text IS NULL OR user_id = :user_id)
  AND created_date >= :from_date
  AND created_date < :to_date
  AND (:q::text IS NULL OR LOWER(ref_id) LIKE :q ESCAPE '!' OR LOWER(command) LIKE :q ESCAPE '!'
       OR LOWER(request) LIKE :q ESCAPE '!' OR LOWER(tag) LIKE :q ESCAPE '!'
       OR LOWER(batch_id) LIKE :q ESCAPE '!' OR LOWER(request_body) LIKE :q ESCAPE '!')
ORDER BY id DESC
LIMIT :limit OFFSET :offset;

-- name: admin_list_failed
-- One month's failed and cancelled jobs.
SELECT id, ref_id, request_type, command, request, worker, tag, batch_id, parent_id,
       depends_on, callback, created_by, user_id, state, created_date, started_date,
       completed_date, duration_ms, attempts, error_code, error ->> 'message' AS error_message
FROM failed_job
WHERE (:state::text IS NULL OR state = :state)
  AND (:command::text IS NULL OR command = :command
       OR (command IS NULL AND request = :command))
  AND (:request_type::text IS NULL OR request_type = :request_type)
  AND (:worker::text IS NULL OR worker = :worker)
  AND (:tag::text IS NULL OR tag = :tag)
  AND (:batch_id::text IS NULL OR batch_id = :batch_id)
  AND (:ref_id::text IS NULL OR ref_id = :ref_id)
  AND (:created_by::text IS NULL OR created_by = :created_by)
  AND (:user_id::text IS NULL OR user_id = :user_id)
  AND created_date >= :from_date
  AND created_date < :to_date
  AND (:q::text IS NULL OR LOWER(ref_id) LIKE :q ESCAPE '!' OR LOWER(command) LIKE :q ESCAPE '!'
       OR LOWER(request) LIKE :q ESCAPE '!' OR LOWER(tag) LIKE :q ESCAPE '!'
       OR LOWER(batch_id) LIKE :q ESCAPE '!' OR LOWER(request_body) LIKE :q ESCAPE '!'
       OR LOWER(error ->> 'message') LIKE :q ESCAPE '!')
ORDER BY id DESC
LIMIT :limit OFFSET :offset;

-- name: admin_related
-- Jobs that depend on a job or name it as their parent.
SELECT id, ref_id, request_type, command, request, worker, tag, parent_id, depends_on, state,
       created_date, completed_date, duration_ms, error_code, error_message
FROM job_summary
WHERE depends_on = :id OR parent_id = :id
ORDER BY id
LIMIT 100;

-- name: admin_job_live
-- A running job's progress and the log text past :log_offset characters, for the live panel.
-- substr takes an integer: the start is counted in bigint (an offset of 2**31-1 plus one would
-- overflow integer) and capped, which cuts nothing: a text value holds at most 1 GB.
SELECT id, state, progress, status, attempts, started_date, last_activity_date,
       cancel_requested, length(logs) AS log_length,
       substr(logs, least(:log_offset::bigint + 1, 2147483647)::integer) AS log_tail
FROM background_job
WHERE id = :id;

-- name: admin_scheduled_tasks
-- Recurring tasks with the state of the last job each enqueued (options tell whether the admin
-- can run one now).
SELECT t.id, t.name, t.schedule, t.request_type, t.command, t.request, t.options, t.enabled,
       t.last_run, t.next_run, t.last_job_id, t.created_date, t.modified_date,
       s.state AS last_job_state, s.duration_ms AS last_job_duration_ms
FROM scheduled_task t
LEFT JOIN job_summary s ON s.id = t.last_job_id
ORDER BY t.name;

-- name: admin_nodes
-- Processes that run jobs, with their lease, alive by the clock that times leases.
SELECT id, host, pid, started_date, lease_expires,
       lease_expires > now() AS alive
FROM job_node
ORDER BY started_date, id;
