-- Recurring tasks. A task fires when its next_run is due; firing moves next_run on with a
-- compare-and-set on the old value, so one process wins each occurrence.

-- name: upsert_task
-- Register a task or update it by name, keeping last_run and last_job_id. A changed schedule
-- takes the newly computed next_run; an unchanged one keeps its pending next_run.
-- MySQL spells upsert ON DUPLICATE KEY UPDATE and applies its assignments left to right, so
-- next_run is decided before schedule is overwritten. Parameters are repeated rather than
-- read with VALUES(), which MySQL 8 deprecates (and MariaDB lacks the row alias that replaces it).
INSERT INTO scheduled_task (name, schedule, request_type, command, request, request_body,
                            options, enabled, next_run, created_date, modified_date)
VALUES (:name, :schedule, :request_type, :command, :request, :request_body, :options, 1,
        :next_run, :now, :now)
ON DUPLICATE KEY UPDATE
    next_run = CASE WHEN schedule = :schedule AND next_run IS NOT NULL
                    THEN next_run ELSE :next_run END,
    schedule = :schedule, request_type = :request_type, command = :command,
    request = :request, request_body = :request_body, options = :options, enabled = 1,
    modified_date = :now;

-- name: delete_task
DELETE FROM scheduled_task WHERE name = :name;

-- name: list_tasks
SELECT * FROM scheduled_task ORDER BY name;

-- name: due_tasks
SELECT * FROM scheduled_task WHERE enabled = 1 AND next_run <= :now ORDER BY next_run, name;

-- name: next_task_due
SELECT MIN(next_run) AS next_run FROM scheduled_task WHERE enabled = 1;

-- name: advance_task
-- Take an occurrence: only the process that still sees next_run = :expected moves it. (Under
-- READ COMMITTED a competing UPDATE waits for the winner's lock, then re-reads the row and
-- matches nothing.)
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
SELECT UTC_TIMESTAMP(6) AS now;
