-- The schema, as numbered migrations. A migration's statements end with a ';' at end of line;
-- the dialect sends them one by one, inside the migrate transaction. SQL Server DDL is
-- transactional, so a migration applies completely or not at all, and is recorded in
-- schema_version by the same transaction.
-- Times are datetime2(6) holding UTC. Names, states and other short keys are nvarchar(255) with
-- a binary collation, so ref_id and worker names compare exactly (as on the other databases)
-- whatever the database's default collation; bodies, logs and JSON are nvarchar(max).
-- Needs database compatibility level 130+ (OPENJSON, STRING_AGG from 140: SQL Server 2017+).

-- name: create_schema_version
-- Bookkeeping for migrations; created before anything else.
-- Several processes may migrate a fresh database at once, and two concurrent CREATE TABLEs of one
-- name fail. This application lock, held to the end of the migrate transaction, makes them take
-- turns; the later ones then find the version applied.
EXEC sp_getapplock @Resource = N'asyncjobs.migrate', @LockMode = 'Exclusive',
    @LockOwner = 'Transaction', @LockTimeout = 60000;
IF OBJECT_ID(N'schema_version', N'U') IS NULL
CREATE TABLE schema_version (
    version int NOT NULL CONSTRAINT pk_schema_version PRIMARY KEY,
    applied_date datetime2(6) NOT NULL
);

-- name: get_schema_version
SELECT COALESCE(MAX(version), 0) AS version FROM schema_version;

-- name: set_schema_version
INSERT INTO schema_version (version, applied_date) VALUES (:version, :now);

-- name: migration_1
-- The active queue, the per-job summary, named-worker locks, the nodes that hold leases, the
-- scheduled tasks and the register of monthly archive tables (completed_job_YYYYMM and
-- failed_job_YYYYMM, made by create_archive).
-- Job ids come from a sequence rather than IDENTITY: a requeued job goes back into the queue
-- with its old id, and inserting an explicit id into an IDENTITY column needs
-- SET IDENTITY_INSERT, session state that a failed batch would leave switched on.
CREATE SEQUENCE background_job_id AS bigint START WITH 1 INCREMENT BY 1;
CREATE TABLE background_job (
    id bigint NOT NULL
        CONSTRAINT df_background_job_id DEFAULT (NEXT VALUE FOR background_job_id),
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
    attempts int NOT NULL CONSTRAINT df_background_job_attempts DEFAULT (0),
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
    priority int NOT NULL CONSTRAINT df_background_job_priority DEFAULT (0),
    lease_owner nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    cancel_requested bit NOT NULL CONSTRAINT df_background_job_cancel DEFAULT (0),
    CONSTRAINT pk_background_job PRIMARY KEY CLUSTERED (id)
);
-- Claims skip rows other transactions lock (READPAST). A table lock cannot be skipped, so a
-- large enqueue or cancel must never escalate its row locks into one: it would stall every claim
-- until it commits.
ALTER TABLE background_job SET (LOCK_ESCALATION = DISABLE);
-- The claim of jobs without a worker walks this index in priority-then-age order, and it holds
-- only such jobs, so that claim never reads (or locks) a named worker's job.
CREATE INDEX ix_background_job_claim ON background_job (priority DESC, id)
    INCLUDE (run_after, depends_on)
    WHERE state = 'Queued' AND worker IS NULL;
-- Named workers: a worker's queued jobs in id order (its head first), and its running jobs.
CREATE INDEX ix_background_job_worker ON background_job (worker, state, id)
    INCLUDE (priority, run_after, depends_on);
CREATE INDEX ix_background_job_lease ON background_job (lease_owner)
    INCLUDE (cancel_requested)
    WHERE state IN ('Started', 'Executed');
CREATE INDEX ix_background_job_depends_on ON background_job (depends_on)
    WHERE depends_on IS NOT NULL;
CREATE INDEX ix_background_job_run_after ON background_job (run_after)
    WHERE state = 'Queued' AND run_after IS NOT NULL;
-- Every job has its summary, inserted by the same batch; ref_id is unique here, so enqueueing
-- a taken ref_id fails with a unique violation (2601).
CREATE TABLE job_summary (
    id bigint NOT NULL CONSTRAINT pk_job_summary PRIMARY KEY,
    parent_id bigint NULL,
    ref_id nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL,
    worker nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    tag nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    batch_id nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    callback nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    depends_on bigint NULL,
    created_date datetime2(6) NOT NULL,
    created_by nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    request_type nvarchar(16) COLLATE Latin1_General_100_BIN2 NOT NULL,
    command nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    request nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL,
    user_id nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    state nvarchar(16) COLLATE Latin1_General_100_BIN2 NOT NULL,
    started_date datetime2(6) NULL,
    completed_date datetime2(6) NULL,
    duration_ms bigint NULL,
    attempts int NOT NULL CONSTRAINT df_job_summary_attempts DEFAULT (0),
    error_code nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    error_message nvarchar(max) NULL
);
CREATE UNIQUE INDEX ux_job_summary_ref_id ON job_summary (ref_id);
CREATE INDEX ix_job_summary_created_date ON job_summary (created_date);
CREATE INDEX ix_job_summary_command ON job_summary (command, worker, id);
-- One row per named worker ever used: the claim locks it (UPDLOCK, READPAST) so that only one
-- transaction in the cluster decides what that worker runs next. Rows are never deleted.
-- IGNORE_DUP_KEY: two enqueues registering one new worker at once both succeed (the second
-- insert is dropped with a warning) instead of one failing with a duplicate key.
CREATE TABLE job_worker (
    name nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL,
    CONSTRAINT pk_job_worker PRIMARY KEY CLUSTERED (name) WITH (IGNORE_DUP_KEY = ON)
);
CREATE TABLE job_node (
    id nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT pk_job_node PRIMARY KEY,
    host nvarchar(255) NOT NULL,
    pid int NOT NULL,
    started_date datetime2(6) NOT NULL,
    lease_expires datetime2(6) NOT NULL
);
CREATE TABLE scheduled_task (
    id bigint IDENTITY(1, 1) NOT NULL CONSTRAINT pk_scheduled_task PRIMARY KEY,
    name nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL,
    schedule nvarchar(255) NOT NULL,
    request_type nvarchar(16) COLLATE Latin1_General_100_BIN2 NOT NULL,
    command nvarchar(255) COLLATE Latin1_General_100_BIN2 NULL,
    request nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL,
    request_body nvarchar(max) NOT NULL,
    options nvarchar(max) NULL,
    enabled bit NOT NULL CONSTRAINT df_scheduled_task_enabled DEFAULT (1),
    last_run datetime2(6) NULL,
    last_job_id bigint NULL,
    next_run datetime2(6) NULL,
    created_date datetime2(6) NOT NULL,
    modified_date datetime2(6) NOT NULL,
    CONSTRAINT ux_scheduled_task_name UNIQUE (name)
);
CREATE TABLE archive_month (
    month nchar(6) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT pk_archive_month PRIMARY KEY
);

-- name: migration_2
-- Nothing to change here: migration 2 re-orders the claim index of MySQL and SQLite.
SELECT 1;

-- name: migration_3
-- Nothing to change here: migration 3 changes PostgreSQL's summary indexes.
SELECT 1;

-- name: migration_4
-- Nothing to change here: migration 4 replaces PostgreSQL's wake-up trigger.
SELECT 1;

-- name: migration_5
-- How many failed jobs were requeued, ever: a requeued job comes back under its old id, which
-- the change watch of new job ids cannot see, so the watch reads this count too (SQLite's
-- migration 5 indexes its delayed jobs).
CREATE TABLE job_requeues (
    id tinyint NOT NULL CONSTRAINT pk_job_requeues PRIMARY KEY,
    total bigint NOT NULL
);
INSERT INTO job_requeues (id, total) VALUES (1, 0);

-- name: migration_6
-- The claim walked ix_background_job_claim in priority-then-age order, and a job it passes
-- over costs a read: delayed jobs not yet due (and retries waiting out their backoff, which
-- keep their old ids) sat in it ahead of new work, so 100k of them made every claim read 100k
-- rows. It now walks ix_background_job_ready, which holds only jobs never delayed; delayed
-- jobs without a worker come from ix_background_job_due, by due time, once due.
-- ix_background_job_claim stays while processes of the version before may run: their claim
-- names it in an INDEX hint, which SQL Server refuses (8622) for a filtered index whose
-- filter the query does not imply, as a narrowed one's would not be.
CREATE INDEX ix_background_job_ready ON background_job (priority DESC, id)
    INCLUDE (depends_on)
    WHERE state = 'Queued' AND worker IS NULL AND run_after IS NULL;
CREATE INDEX ix_background_job_due ON background_job (run_after)
    INCLUDE (priority, depends_on)
    WHERE state = 'Queued' AND worker IS NULL AND run_after IS NOT NULL;

-- name: migration_7
-- A dependent waits for its parent to complete. parent_pending (1) marks those enqueued while
-- their parent had not completed (the enqueue sets it); the parent's completion clears it
-- (complete_and_claim_jobs), and the periodic recovery clears it for a dependent whose enqueue
-- committed after that completion, which could not see it (release_dependents). The other
-- databases leave marked jobs out of the claim's indexes. Here the claim's filtered indexes
-- stay as they are while processes of the version before may run: their claim names them in
-- INDEX hints, which SQL Server refuses (8622) for a filtered index whose filter the query does
-- not imply (see migration_6).
ALTER TABLE background_job ADD parent_pending bit NOT NULL
    CONSTRAINT df_background_job_parent_pending DEFAULT 0;
UPDATE j SET parent_pending = 1
FROM background_job AS j
LEFT JOIN job_summary AS p ON p.id = j.depends_on
WHERE j.depends_on IS NOT NULL AND j.state = 'Queued'
  AND (p.state IS NULL OR p.state <> 'Completed');

-- name: migration_8
-- Nothing to change here: migration 8 makes PostgreSQL hold at most one running job per named
-- worker (its claim reads one snapshot).
SELECT 1;
