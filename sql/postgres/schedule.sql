-- Recurring tasks. A task fires when its next_run is due; firing moves next_run on with a
-- compare-and-set on the old value, so one process wins each occurrence: under READ COMMITTED
-- a second UPDATE waits for the first's row lock, re-checks next_run = :expected against the
-- committed row and matches nothing.

-- name: upsert_task
-- Register a task or update it by name, keeping last_run and last_job_id. A changed schedule
-- takes the newly computed next_run; an unchanged one keeps its pending next_run.
INSERT INTO scheduled_task (name, schedule, request_type, command, request, request_body,
                            options, enabled, next_run, created_date, modified_date)
VALUES (:name, :schedule, :request_type, :command, :request, :request_body, :options, true,
        :next_run, :now, :now)
ON CONFLICT (name) DO UPDATE SET
    next_run = CASE WHEN scheduled_task.schedule = excluded.schedule
                     AND scheduled_task.next_run IS NOT NULL
                    THEN scheduled_task.next_run ELSE excluded.next_run END,
    schedule = excluded.schedule, request_type = excluded.request_type,
    command = excluded.command, request = excluded.request,
    request_body = excluded.request_body, options = excluded.options, enabled = true,
    modified_date = excluded.modified_date;

-- name: delete_task
DELETE FROM scheduled_task WHERE name = :name;

-- name: list_tasks
SELECT * FROM scheduled_task ORDER BY name;

-- name: due_tasks
SELECT * FROM scheduled_task WHERE enabled AND next_run <= :now ORDER BY next_run, name;

-- name: next_task_due
SELECT MIN(next_run) AS next_run FROM scheduled_task WHERE enabled;

-- name: advance_task
-- Take an occurrence: only the process that still sees next_run = :expected moves it.
UPDATE scheduled_task
SET next_run = :next_run, last_run = :fire, modified_date = :now
WHERE name = :name AND next_run = :expected;

-- name: skip_task
-- Move past an occurrence without running it.
UPDATE scheduled_task
SET next_run = :next_run, modified_date = :now
WHERE name = :name AND next_run = :expected;

-- name: set_task_job
UPDATE scheduled_task SET last_job_id = :job_id WHERE name = :name;

-- name: database_time
-- The scheduler's time (see DatabaseClock): the server's clock, as leases and run_after go by.
SELECT clock_timestamp() AS now;
