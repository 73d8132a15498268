-- Archives: completed jobs go to completed_job, failed and cancelled ones to failed_job.
-- Differs from SQLite: each is one table PARTITION BY RANGE (TO_DAYS(created_date)) with a
-- partition per month (pYYYYMM) and a MAXVALUE catch-all (pmax), see migration_1. Queries name
-- the table and MySQL routes rows and prunes partitions. {month} is always a validated YYYYMM
-- string, {start} and {end} YYYYMMDD strings, never user text.
--
-- Partition DDL commits implicitly in MySQL. The runtime runs create_archive and drop_archive
-- in transactions of their own (at start-up and hourly, never while archiving), and each script
-- is safe to repeat: it reads information_schema and builds the one ALTER TABLE that is still
-- needed (or DO 0), under a named lock so that processes starting together take turns. The
-- lock is per session and survives the implicit commits; the dialect drops the connection if a
-- script fails half-way, which releases it.

-- name: create_archive
-- One month's partitions, split off the partition that now holds the month's first day
-- (normally pmax, which is empty, so the split moves no rows; an earlier month splits a filled
-- partition and copies its rows). The new partition reaches up to {end} from the bound of the
-- partition below it, so no row is ever outside a partition. Nothing to do when that partition
-- already ends within the month (it is p{month}, or was made by hand).
DO GET_LOCK(CONCAT('asyncjobs.archive.', MD5(DATABASE())), 60);
SELECT COALESCE((
    SELECT IF(p.bound <= TO_DAYS('{end}'), 'DO 0',
              CONCAT('ALTER TABLE completed_job REORGANIZE PARTITION ', p.name,
                     ' INTO (PARTITION p{month} VALUES LESS THAN (', TO_DAYS('{end}'),
                     '), PARTITION ', p.name, ' VALUES LESS THAN (', p.description, '))'))
    FROM (SELECT partition_name AS name, partition_description AS description,
                 partition_ordinal_position AS position,
                 CASE partition_description WHEN 'MAXVALUE' THEN ~0
                      ELSE CAST(partition_description AS UNSIGNED) END AS bound
          FROM information_schema.partitions
          WHERE table_schema = DATABASE() AND table_name = 'completed_job') AS p
    WHERE p.bound > TO_DAYS('{start}')
    ORDER BY p.position
    LIMIT 1
), 'DO 0') INTO @asyncjobs_ddl;
PREPARE asyncjobs_ddl FROM @asyncjobs_ddl;
EXECUTE asyncjobs_ddl;
DEALLOCATE PREPARE asyncjobs_ddl;
SELECT COALESCE((
    SELECT IF(p.bound <= TO_DAYS('{end}'), 'DO 0',
              CONCAT('ALTER TABLE failed_job REORGANIZE PARTITION ', p.name,
                     ' INTO (PARTITION p{month} VALUES LESS THAN (', TO_DAYS('{end}'),
                     '), PARTITION ', p.name, ' VALUES LESS THAN (', p.description, '))'))
    FROM (SELECT partition_name AS name, partition_description AS description,
                 partition_ordinal_position AS position,
                 CASE partition_description WHEN 'MAXVALUE' THEN ~0
                      ELSE CAST(partition_description AS UNSIGNED) END AS bound
          FROM information_schema.partitions
          WHERE table_schema = DATABASE() AND table_name = 'failed_job') AS p
    WHERE p.bound > TO_DAYS('{start}')
    ORDER BY p.position
    LIMIT 1
), 'DO 0') INTO @asyncjobs_ddl;
PREPARE asyncjobs_ddl FROM @asyncjobs_ddl;
EXECUTE asyncjobs_ddl;
DEALLOCATE PREPARE asyncjobs_ddl;
DO RELEASE_LOCK(CONCAT('asyncjobs.archive.', MD5(DATABASE())));

-- name: archive_months
-- Months that have partitions (completed_job and failed_job are split and dropped together).
SELECT SUBSTRING(partition_name, 2) AS month
FROM information_schema.partitions
WHERE table_schema = DATABASE() AND table_name = 'completed_job'
  AND partition_name REGEXP '^p[0-9]{6}$'
ORDER BY partition_name;

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
    b.id, b.parent_id, b.ref_id, b.worker, b.tag, b.batch_id, b.callback, b.depends_on,
    b.run_after, b.created_date, b.created_by, b.request_type, b.command, b.request,
    b.request_body, b.user_id, b.response, b.response_body, b.state, b.started_date,
    b.completed_date, b.notified_date, b.retry_limit, b.attempts, b.duration_ms, b.timeout_secs,
    b.progress, b.status, b.logs, b.last_activity_date, b.reply_to, b.error_code, b.error,
    b.args, b.meta, b.priority
FROM JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
WHERE b.state = 'Completed';

-- name: archive_failed
INSERT INTO failed_job (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, response, response_body,
    state, started_date, completed_date, notified_date, retry_limit, attempts, duration_ms,
    timeout_secs, progress, status, logs, last_activity_date, reply_to, error_code, error, args,
    meta, priority
)
SELECT
    b.id, b.parent_id, b.ref_id, b.worker, b.tag, b.batch_id, b.callback, b.depends_on,
    b.run_after, b.created_date, b.created_by, b.request_type, b.command, b.request,
    b.request_body, b.user_id, b.response, b.response_body, b.state, b.started_date,
    b.completed_date, b.notified_date, b.retry_limit, b.attempts, b.duration_ms, b.timeout_secs,
    b.progress, b.status, b.logs, b.last_activity_date, b.reply_to, b.error_code, b.error,
    b.args, b.meta, b.priority
FROM JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
WHERE b.state IN ('Failed', 'Cancelled');

-- name: complete_jobs
-- The finisher's common case, many successful executions at once: each job this node still
-- holds gets its outcome, is copied into the archive, has its summary updated and leaves the
-- queue. Returns the ids completed; a job missing from them was taken over by another node (its
-- lease ran out). :outcomes is a JSON array of {id, duration_ms, response, response_body,
-- status, logs, notified_date}.
-- No DELETE ... RETURNING into an INSERT here: the jobs still held are locked and kept in a
-- session variable, then updated, copied, summarised, deleted and returned (see jobs.sql).
SELECT JSON_ARRAYAGG(c.id) INTO @asyncjobs_done FROM (
    SELECT b.id FROM JSON_TABLE(:outcomes, '$[*]' COLUMNS (id BIGINT PATH '$.id')) AS i
    STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
    WHERE b.lease_owner = :node
    FOR UPDATE
) AS c;
UPDATE JSON_TABLE(:outcomes, '$[*]' COLUMNS (
    id BIGINT PATH '$.id',
    duration_ms BIGINT PATH '$.duration_ms',
    response LONGTEXT PATH '$.response',
    response_body LONGTEXT PATH '$.response_body',
    status LONGTEXT PATH '$.status',
    logs LONGTEXT PATH '$.logs',
    notified_date DATETIME(6) PATH '$.notified_date'
)) AS o
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = o.id
SET b.state = 'Completed', b.completed_date = :now, b.last_activity_date = :now,
    b.duration_ms = o.duration_ms, b.response = o.response, b.response_body = o.response_body,
    b.error = NULL, b.error_code = NULL, b.progress = 1.0,
    b.status = COALESCE(o.status, b.status),
    b.notified_date = COALESCE(o.notified_date, b.notified_date),
    b.logs = CASE WHEN o.logs IS NULL THEN b.logs ELSE CONCAT(COALESCE(b.logs, ''), o.logs) END
WHERE b.lease_owner = :node;
INSERT INTO completed_job (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, response, response_body,
    state, started_date, completed_date, notified_date, retry_limit, attempts, duration_ms,
    timeout_secs, progress, status, logs, last_activity_date, reply_to, error_code, error, args,
    meta, priority
)
SELECT
    b.id, b.parent_id, b.ref_id, b.worker, b.tag, b.batch_id, b.callback, b.depends_on,
    b.run_after, b.created_date, b.created_by, b.request_type, b.command, b.request,
    b.request_body, b.user_id, b.response, b.response_body, b.state, b.started_date,
    b.completed_date, b.notified_date, b.retry_limit, b.attempts, b.duration_ms, b.timeout_secs,
    b.progress, b.status, b.logs, b.last_activity_date, b.reply_to, b.error_code, b.error,
    b.args, b.meta, b.priority
FROM JSON_TABLE(@asyncjobs_done, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id;
UPDATE JSON_TABLE(@asyncjobs_done, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
STRAIGHT_JOIN job_summary s FORCE INDEX (PRIMARY) ON s.id = b.id
SET s.state = b.state, s.started_date = b.started_date, s.completed_date = b.completed_date,
    s.duration_ms = b.duration_ms, s.attempts = b.attempts, s.error_code = NULL,
    s.error_message = NULL;
DELETE b FROM JSON_TABLE(@asyncjobs_done, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id;
SELECT i.id FROM JSON_TABLE(@asyncjobs_done, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i;

-- name: delete_archived
-- Remove archived jobs from the queue (same transaction as the archive insert).
DELETE b FROM JSON_TABLE(:ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
WHERE b.state IN ('Completed', 'Failed', 'Cancelled');

-- name: get_completed_job
-- Differs from SQLite: filtering on created_date (the partition key) prunes to one partition.
SELECT * FROM completed_job WHERE id = :id AND created_date = :created_date;

-- name: get_failed_job
SELECT * FROM failed_job WHERE id = :id AND created_date = :created_date;

-- name: requeue_failed
-- Bring a failed or cancelled job back into the queue with the same id and a fresh retry budget.
-- (Its worker's job_worker row exists: those rows are never deleted.)
INSERT INTO background_job (
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, run_after, created_date,
    created_by, request_type, command, request, request_body, user_id, response, response_body,
    state, started_date, completed_date, notified_date, retry_limit, attempts, duration_ms,
    timeout_secs, progress, status, logs, last_activity_date, reply_to, error_code, error, args,
    meta, priority
)
SELECT
    id, parent_id, ref_id, worker, tag, batch_id, callback, depends_on, NULL, created_date,
    created_by, request_type, command, request, request_body, user_id, NULL, NULL, 'Queued',
    NULL, NULL, NULL, retry_limit, 0, NULL, timeout_secs, NULL, NULL, logs, :now, reply_to,
    error_code, error, args, meta, priority
FROM failed_job WHERE id = :id;

-- name: delete_failed
DELETE FROM failed_job WHERE id = :id;

-- name: drop_archive
-- Retention: a month goes as a unit. Dropping a RANGE partition drops its rows; later rows of
-- that range would fall into the partition above, which is newer. A no-op for a month without
-- a partition.
DO GET_LOCK(CONCAT('asyncjobs.archive.', MD5(DATABASE())), 60);
SELECT IF(EXISTS (SELECT 1 FROM information_schema.partitions
                  WHERE table_schema = DATABASE() AND table_name = 'completed_job'
                    AND partition_name = 'p{month}'),
          'ALTER TABLE completed_job DROP PARTITION p{month}', 'DO 0')
INTO @asyncjobs_ddl;
PREPARE asyncjobs_ddl FROM @asyncjobs_ddl;
EXECUTE asyncjobs_ddl;
DEALLOCATE PREPARE asyncjobs_ddl;
SELECT IF(EXISTS (SELECT 1 FROM information_schema.partitions
                  WHERE table_schema = DATABASE() AND table_name = 'failed_job'
                    AND partition_name = 'p{month}'),
          'ALTER TABLE failed_job DROP PARTITION p{month}', 'DO 0')
INTO @asyncjobs_ddl;
PREPARE asyncjobs_ddl FROM @asyncjobs_ddl;
EXECUTE asyncjobs_ddl;
DEALLOCATE PREPARE asyncjobs_ddl;
DO RELEASE_LOCK(CONCAT('asyncjobs.archive.', MD5(DATABASE())));

-- name: delete_old_summaries
-- Retention: summaries of finished jobs created before the oldest kept month.
DELETE FROM job_summary
WHERE created_date < :before AND state IN ('Completed', 'Failed', 'Cancelled');
