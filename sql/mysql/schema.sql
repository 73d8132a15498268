-- The schema, as numbered migrations. A migration's statements end with a ';' at end of line.
-- MySQL commits implicitly before and after every DDL statement, so a migration is not atomic:
-- every statement is idempotent (IF NOT EXISTS, indexes declared inside CREATE TABLE because
-- MySQL 8 has no CREATE INDEX IF NOT EXISTS), and a migration interrupted half-way, or run by
-- two processes starting at once, completes when it is run again.
-- Tables use utf8mb4 with binary collation: ref_id and worker names compare exactly, as on the
-- other databases. Datetimes are DATETIME(6) holding UTC (never TIMESTAMP, which the session
-- time zone would shift).

-- name: create_schema_version
-- Bookkeeping for migrations; created before anything else.
CREATE TABLE IF NOT EXISTS schema_version (
    version INT NOT NULL PRIMARY KEY,
    applied_date DATETIME(6) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- name: get_schema_version
SELECT COALESCE(MAX(version), 0) AS version FROM schema_version;

-- name: set_schema_version
-- Two processes migrating at once both record the version; the second write is a no-op.
INSERT INTO schema_version (version, applied_date) VALUES (:version, :now)
ON DUPLICATE KEY UPDATE version = version;

-- name: migration_1
-- The active queue, the per-job summary, named-worker locks, the nodes that hold leases, the
-- scheduled tasks and the archives.
CREATE TABLE IF NOT EXISTS background_job (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    parent_id BIGINT NULL,
    ref_id VARCHAR(255) NOT NULL,
    worker VARCHAR(255) NULL,
    tag VARCHAR(255) NULL,
    batch_id VARCHAR(255) NULL,
    callback VARCHAR(255) NULL,
    depends_on BIGINT NULL,
    run_after DATETIME(6) NULL,
    created_date DATETIME(6) NOT NULL,
    created_by VARCHAR(255) NULL,
    request_type VARCHAR(16) NOT NULL,
    command VARCHAR(255) NULL,
    request VARCHAR(255) NOT NULL,
    request_body LONGTEXT NOT NULL,
    user_id VARCHAR(255) NULL,
    response VARCHAR(255) NULL,
    response_body LONGTEXT NULL,
    state VARCHAR(16) NOT NULL,
    started_date DATETIME(6) NULL,
    completed_date DATETIME(6) NULL,
    notified_date DATETIME(6) NULL,
    retry_limit INT NOT NULL,
    attempts INT NOT NULL DEFAULT 0,
    duration_ms BIGINT NULL,
    timeout_secs DOUBLE NULL,
    progress DOUBLE NULL,
    status TEXT NULL,
    logs LONGTEXT NULL,
    last_activity_date DATETIME(6) NULL,
    reply_to TEXT NULL,
    error_code VARCHAR(255) NULL,
    error LONGTEXT NULL,
    args LONGTEXT NULL,
    meta LONGTEXT NULL,
    priority INT NOT NULL DEFAULT 0,
    lease_owner VARCHAR(255) NULL,
    cancel_requested TINYINT NOT NULL DEFAULT 0,
    UNIQUE KEY ux_background_job_ref_id (ref_id),
    -- Replaced by migration_2 (see there).
    KEY ix_background_job_claim (state, priority DESC, id),
    -- Named workers: is one of this worker's jobs running, and which is its oldest queued job?
    KEY ix_background_job_worker (worker, state, id),
    KEY ix_background_job_depends_on (depends_on),
    KEY ix_background_job_lease (lease_owner, cancel_requested),
    KEY ix_background_job_run_after (state, run_after)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE IF NOT EXISTS job_summary (
    id BIGINT NOT NULL PRIMARY KEY,
    parent_id BIGINT NULL,
    ref_id VARCHAR(255) NOT NULL,
    worker VARCHAR(255) NULL,
    tag VARCHAR(255) NULL,
    batch_id VARCHAR(255) NULL,
    callback VARCHAR(255) NULL,
    depends_on BIGINT NULL,
    created_date DATETIME(6) NOT NULL,
    created_by VARCHAR(255) NULL,
    request_type VARCHAR(16) NOT NULL,
    command VARCHAR(255) NULL,
    request VARCHAR(255) NOT NULL,
    user_id VARCHAR(255) NULL,
    state VARCHAR(16) NOT NULL,
    started_date DATETIME(6) NULL,
    completed_date DATETIME(6) NULL,
    duration_ms BIGINT NULL,
    attempts INT NOT NULL DEFAULT 0,
    error_code VARCHAR(255) NULL,
    error_message LONGTEXT NULL,
    UNIQUE KEY ux_job_summary_ref_id (ref_id),
    KEY ix_job_summary_created_date (created_date),
    KEY ix_job_summary_command (command, worker, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- One row per named worker ever used: the claim locks it (FOR UPDATE SKIP LOCKED) so that only
-- one transaction in the cluster decides what that worker runs next. Rows are never deleted.
CREATE TABLE IF NOT EXISTS job_worker (
    name VARCHAR(255) NOT NULL PRIMARY KEY
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE IF NOT EXISTS job_node (
    id VARCHAR(255) NOT NULL PRIMARY KEY,
    host VARCHAR(255) NOT NULL,
    pid INT NOT NULL,
    started_date DATETIME(6) NOT NULL,
    lease_expires DATETIME(6) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE IF NOT EXISTS scheduled_task (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    schedule VARCHAR(255) NOT NULL,
    request_type VARCHAR(16) NOT NULL,
    command VARCHAR(255) NULL,
    request VARCHAR(255) NOT NULL,
    request_body LONGTEXT NOT NULL,
    options LONGTEXT NULL,
    enabled TINYINT NOT NULL DEFAULT 1,
    last_run DATETIME(6) NULL,
    last_job_id BIGINT NULL,
    next_run DATETIME(6) NULL,
    created_date DATETIME(6) NOT NULL,
    modified_date DATETIME(6) NOT NULL,
    UNIQUE KEY ux_scheduled_task_name (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- Archives are partitioned by month of created_date. MySQL requires the partition key in every
-- unique key, hence PRIMARY KEY (id, created_date) rather than (id). The only partition at first
-- is the MAXVALUE catch-all; create_archive splits monthly partitions off it ahead of need, so
-- a job archived for a month that has no partition yet lands in a neighbouring partition and is
-- never lost (the next split moves it into its month).
CREATE TABLE IF NOT EXISTS completed_job (
    id BIGINT NOT NULL,
    parent_id BIGINT NULL,
    ref_id VARCHAR(255) NOT NULL,
    worker VARCHAR(255) NULL,
    tag VARCHAR(255) NULL,
    batch_id VARCHAR(255) NULL,
    callback VARCHAR(255) NULL,
    depends_on BIGINT NULL,
    run_after DATETIME(6) NULL,
    created_date DATETIME(6) NOT NULL,
    created_by VARCHAR(255) NULL,
    request_type VARCHAR(16) NOT NULL,
    command VARCHAR(255) NULL,
    request VARCHAR(255) NOT NULL,
    request_body LONGTEXT NOT NULL,
    user_id VARCHAR(255) NULL,
    response VARCHAR(255) NULL,
    response_body LONGTEXT NULL,
    state VARCHAR(16) NOT NULL,
    started_date DATETIME(6) NULL,
    completed_date DATETIME(6) NULL,
    notified_date DATETIME(6) NULL,
    retry_limit INT NOT NULL,
    attempts INT NOT NULL,
    duration_ms BIGINT NULL,
    timeout_secs DOUBLE NULL,
    progress DOUBLE NULL,
    status TEXT NULL,
    logs LONGTEXT NULL,
    last_activity_date DATETIME(6) NULL,
    reply_to TEXT NULL,
    error_code VARCHAR(255) NULL,
    error LONGTEXT NULL,
    args LONGTEXT NULL,
    meta LONGTEXT NULL,
    priority INT NOT NULL,
    PRIMARY KEY (id, created_date)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin
PARTITION BY RANGE (TO_DAYS(created_date)) (PARTITION pmax VALUES LESS THAN MAXVALUE);
CREATE TABLE IF NOT EXISTS failed_job (
    id BIGINT NOT NULL,
    parent_id BIGINT NULL,
    ref_id VARCHAR(255) NOT NULL,
    worker VARCHAR(255) NULL,
    tag VARCHAR(255) NULL,
    batch_id VARCHAR(255) NULL,
    callback VARCHAR(255) NULL,
    depends_on BIGINT NULL,
    run_after DATETIME(6) NULL,
    created_date DATETIME(6) NOT NULL,
    created_by VARCHAR(255) NULL,
    request_type VARCHAR(16) NOT NULL,
    command VARCHAR(255) NULL,
    request VARCHAR(255) NOT NULL,
    request_body LONGTEXT NOT NULL,
    user_id VARCHAR(255) NULL,
    response VARCHAR(255) NULL,
    response_body LONGTEXT NULL,
    state VARCHAR(16) NOT NULL,
    started_date DATETIME(6) NULL,
    completed_date DATETIME(6) NULL,
    notified_date DATETIME(6) NULL,
    retry_limit INT NOT NULL,
    attempts INT NOT NULL,
    duration_ms BIGINT NULL,
    timeout_secs DOUBLE NULL,
    progress DOUBLE NULL,
    status TEXT NULL,
    logs LONGTEXT NULL,
    last_activity_date DATETIME(6) NULL,
    reply_to TEXT NULL,
    error_code VARCHAR(255) NULL,
    error LONGTEXT NULL,
    args LONGTEXT NULL,
    meta LONGTEXT NULL,
    priority INT NOT NULL,
    PRIMARY KEY (id, created_date)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin
PARTITION BY RANGE (TO_DAYS(created_date)) (PARTITION pmax VALUES LESS THAN MAXVALUE);

-- name: migration_2
-- The claim walks queued jobs without a worker (worker IS NULL) in priority-then-age order
-- straight from ix_background_job_claim, so its LIMIT ... FOR UPDATE SKIP LOCKED locks only the
-- rows it returns, and named workers' jobs queued ahead are not walked (they are found by
-- ix_background_job_worker). (priority DESC needs a real descending index: MariaDB 10.8+ and
-- MySQL 8. Older MariaDB sorts, which locks every queued row for the claim's short transaction:
-- still correct, less parallel.) One ALTER, so it is atomic, and safe to run again.
ALTER TABLE background_job
    DROP INDEX ix_background_job_claim,
    ADD INDEX ix_background_job_claim (state, worker, priority DESC, id);

-- name: migration_3
-- Nothing to change here: migration 3 changes PostgreSQL's summary indexes.
SELECT 1;

-- name: migration_4
-- Nothing to change here: migration 4 replaces PostgreSQL's wake-up trigger.
SELECT 1;

-- name: migration_5
-- How many failed jobs were requeued, ever: a requeued job comes back under its old id, which
-- the change watch of new job ids cannot see, so the watch reads this count too (SQLite's
-- migration 5 indexes its delayed jobs). Safe to repeat, as MySQL commits around the DDL.
CREATE TABLE IF NOT EXISTS job_requeues (
    id TINYINT NOT NULL PRIMARY KEY,
    total BIGINT NOT NULL
) ENGINE=InnoDB;
INSERT INTO job_requeues (id, total) VALUES (1, 0) ON DUPLICATE KEY UPDATE total = total;

-- name: migration_6
-- The claim walks queued jobs without a worker in priority-then-age order, and a job it passes
-- over costs a read: delayed jobs not yet due (and retries waiting out their backoff, which
-- keep their old ids) sat among them ahead of new work, so 100k of them made every claim read
-- 100k rows. With run_after in the index before the order, jobs never delayed
-- (run_after IS NULL) are one range in claim order, and delayed ones another, in due order,
-- read only up to now. One ALTER, so it is atomic, and safe to run again.
ALTER TABLE background_job
    DROP INDEX ix_background_job_claim,
    ADD INDEX ix_background_job_claim (state, worker, run_after, priority DESC, id);

-- name: migration_7
-- A dependent waits for its parent to complete, and until then sat among the queued jobs the
-- claim walks, so 100k dependents of a parent still running made every claim read, and filter
-- out, 100k rows. parent_pending (1) marks those enqueued while their parent had not completed
-- (the enqueue sets it, from its read of the parent); the parent's completion clears it
-- (complete_and_claim_jobs), and the periodic recovery clears it for a dependent whose enqueue
-- committed after that completion, which could not see it (release_dependents). In
-- ix_background_job_claim before run_after, it keeps marked jobs out of the ranges the claim
-- reads; after depends_on in ix_background_job_depends_on, it lets clearing the marks read
-- the marked jobs of a parent only. One ALTER, so it is atomic; it runs
-- only if the column is missing (MySQL has no ADD COLUMN IF NOT EXISTS), so the migration is
-- safe to run again, as MySQL commits around the DDL, and under a named lock, so that
-- processes starting together take turns, waiting up to an hour (the ALTER rebuilds the table;
-- see archive.sql).
DO GET_LOCK(CONCAT('asyncjobs.migration_7.', MD5(DATABASE())), 3600);
SET @asyncjobs_ddl = IF(
    EXISTS (SELECT 1 FROM information_schema.columns
            WHERE table_schema = DATABASE() AND table_name = 'background_job'
              AND column_name = 'parent_pending'),
    'DO 0',
    'ALTER TABLE background_job
         ADD COLUMN parent_pending TINYINT NOT NULL DEFAULT 0,
         DROP INDEX ix_background_job_claim,
         ADD INDEX ix_background_job_claim
             (state, worker, parent_pending, run_after, priority DESC, id),
         DROP INDEX ix_background_job_depends_on,
         ADD INDEX ix_background_job_depends_on (depends_on, parent_pending)');
PREPARE asyncjobs_migration_7 FROM @asyncjobs_ddl;
EXECUTE asyncjobs_migration_7;
DEALLOCATE PREPARE asyncjobs_migration_7;
DO RELEASE_LOCK(CONCAT('asyncjobs.migration_7.', MD5(DATABASE())));
UPDATE background_job j
LEFT JOIN job_summary p ON p.id = j.depends_on
SET j.parent_pending = 1
WHERE j.depends_on IS NOT NULL AND j.state = 'Queued' AND NOT (p.state <=> 'Completed');

-- name: migration_8
-- Nothing to change here: migration 8 makes PostgreSQL hold at most one running job per named
-- worker (its claim reads one snapshot; here the claim locks the worker's row and reads again).
SELECT 1;
