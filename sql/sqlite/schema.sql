-- The schema, as numbered migrations. A migration's statements end with a ';' at end of line.
-- Each runs once, in a transaction, and is recorded in schema_version.

-- name: create_schema_version
-- Bookkeeping for migrations; created before anything else.
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_date TIMESTAMP NOT NULL
);

-- name: get_schema_version
SELECT COALESCE(MAX(version), 0) AS version FROM schema_version;

-- name: set_schema_version
INSERT INTO schema_version (version, applied_date) VALUES (:version, :now);

-- name: migration_1
-- The active queue, the per-job summary, the nodes that hold leases and the scheduled tasks.
-- SQLite keeps archives in one table per month (completed_job_YYYYMM), created by create_archive.
CREATE TABLE background_job (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    parent_id INTEGER,
    ref_id TEXT NOT NULL UNIQUE,
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
    attempts INTEGER NOT NULL DEFAULT 0,
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
    priority INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
-- The claim scans queued jobs in priority-then-age order (replaced by migration_2).
CREATE INDEX ix_background_job_claim ON background_job (priority DESC, id) WHERE state = 'Queued';
-- Named workers: is one of this worker's jobs running, and which is its oldest queued job?
CREATE INDEX ix_background_job_worker ON background_job (worker, state, id) WHERE worker IS NOT NULL;
CREATE INDEX ix_background_job_depends_on ON background_job (depends_on) WHERE depends_on IS NOT NULL;
CREATE INDEX ix_background_job_lease ON background_job (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE TABLE job_summary (
    id INTEGER PRIMARY KEY,
    parent_id INTEGER,
    ref_id TEXT NOT NULL,
    worker TEXT,
    tag TEXT,
    batch_id TEXT,
    callback TEXT,
    depends_on INTEGER,
    created_date TIMESTAMP NOT NULL,
    created_by TEXT,
    request_type TEXT NOT NULL,
    command TEXT,
    request TEXT NOT NULL,
    user_id TEXT,
    state TEXT NOT NULL,
    started_date TIMESTAMP,
    completed_date TIMESTAMP,
    duration_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    error_code TEXT,
    error_message TEXT
);
CREATE UNIQUE INDEX ix_job_summary_ref_id ON job_summary (ref_id);
CREATE INDEX ix_job_summary_created_date ON job_summary (created_date);
-- Progress estimates read the last durations of a command.
CREATE INDEX ix_job_summary_command ON job_summary (command, id);
CREATE TABLE job_node (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_date TIMESTAMP NOT NULL,
    lease_expires TIMESTAMP NOT NULL
);
CREATE TABLE scheduled_task (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    schedule TEXT NOT NULL,
    request_type TEXT NOT NULL,
    command TEXT,
    request TEXT NOT NULL,
    request_body TEXT NOT NULL,
    options TEXT,
    enabled INTEGER NOT NULL DEFAULT 1,
    last_run TIMESTAMP,
    last_job_id INTEGER,
    next_run TIMESTAMP,
    created_date TIMESTAMP NOT NULL,
    modified_date TIMESTAMP NOT NULL
);
CREATE TABLE archive_month (
    month TEXT PRIMARY KEY
);

-- name: migration_2
-- The claim index holds only jobs without a worker: named workers' jobs are found per worker
-- through ix_background_job_worker, and the claim's walk of the index in priority-then-age
-- order no longer passes over them.
DROP INDEX IF EXISTS ix_background_job_claim;
CREATE INDEX ix_background_job_claim ON background_job (priority DESC, id)
    WHERE state = 'Queued' AND worker IS NULL;

-- name: migration_3
-- Nothing to change here: migration 3 changes PostgreSQL's summary indexes.
SELECT 1;

-- name: migration_4
-- Nothing to change here: migration 4 replaces PostgreSQL's wake-up trigger.
SELECT 1;

-- name: migration_5
-- Delayed jobs by due time: each claim reports when the next one is due (a probe of this
-- index, not a walk of the queue), and only delayed jobs are in it.
CREATE INDEX ix_background_job_run_after ON background_job (run_after)
    WHERE state = 'Queued' AND run_after IS NOT NULL;

-- name: migration_6
-- The claim walks ix_background_job_claim in priority-then-age order, and a job it passes over
-- costs a read: delayed jobs not yet due (and retries waiting out their backoff, which keep
-- their old ids) sat in it ahead of new work, so 100k of them made every claim read 100k
-- rows. It now holds only jobs never delayed; delayed jobs without a worker come from
-- ix_background_job_due, by due time, once due.
DROP INDEX IF EXISTS ix_background_job_claim;
CREATE INDEX ix_background_job_claim ON background_job (priority DESC, id)
    WHERE state = 'Queued' AND worker IS NULL AND run_after IS NULL;
CREATE INDEX IF NOT EXISTS ix_background_job_due ON background_job (run_after)
    WHERE state = 'Queued' AND worker IS NULL AND run_after IS NOT NULL;

-- name: migration_7
-- A dependent waits for its parent to complete, and until then sat in the claim's indexes, so
-- 100k dependents of a parent still running made every claim read, and filter out, 100k rows.
-- parent_pending (1) marks those enqueued while their parent had not completed (the enqueue
-- sets it, from its read of the parent); the parent's completion clears it
-- (complete_and_claim_jobs). The claim's indexes leave marked jobs out; ix_background_job_held
-- holds only them, so that clearing the marks reads the marked jobs of the parent only.
ALTER TABLE background_job ADD COLUMN parent_pending INTEGER NOT NULL DEFAULT 0;
UPDATE background_job SET parent_pending = 1
WHERE depends_on IS NOT NULL AND state = 'Queued'
  AND (SELECT p.state FROM job_summary p WHERE p.id = background_job.depends_on)
      IS NOT 'Completed';
DROP INDEX IF EXISTS ix_background_job_claim;
CREATE INDEX ix_background_job_claim ON background_job (priority DESC, id)
    WHERE state = 'Queued' AND worker IS NULL AND run_after IS NULL AND parent_pending = 0;
DROP INDEX IF EXISTS ix_background_job_due;
CREATE INDEX ix_background_job_due ON background_job (run_after)
    WHERE state = 'Queued' AND worker IS NULL AND run_after IS NOT NULL AND parent_pending = 0;
CREATE INDEX ix_background_job_held ON background_job (depends_on) WHERE parent_pending = 1;

-- name: migration_8
-- Nothing to change here: migration 8 makes PostgreSQL hold at most one running job per named
-- worker (its claim reads one snapshot; SQLite has one writer at a time).
SELECT 1;
