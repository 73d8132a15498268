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
-- script fails half-way, which releases it. A process waits for it up to an hour: the split of
-- a filled partition copies its rows, and a process that stopped waiting would check
-- information_schema before that ALTER committed and run it a second time, which fails.

-- name: create_archive
-- One month's partitions, split off the partition that now holds the month's first day
-- (normally pmax, which is empty, so the split moves no rows; an earlier month splits a filled
-- partition and copies its rows). The new partition reaches up to {end} from the bound of the
-- partition below it, so no row is ever outside a partition. Nothing to do when that partition
-- already ends within the month (it is p{month}, or was made by hand).
DO GET_LOCK(CONCAT('asyncjobs.archive.', MD5(DATABASE())), 3600);
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
FROM failed_job WHERE id = :id;

-- name: delete_failed
-- The requeued job leaves the archive, and the requeue is counted for the change watch of
-- other processes (see migration_5). Last in the requeue's transaction but for its summary,
-- so the count's row, which every requeue updates, is held briefly.
DELETE FROM failed_job WHERE id = :id;
UPDATE job_requeues SET total = total + 1 WHERE id = 1;

-- name: drop_archive
-- Retention: a month goes as a unit. Dropping a RANGE partition drops its rows; later rows of
-- that range would fall into the partition above, which is newer. A no-op for a month without
-- a partition.
DO GET_LOCK(CONCAT('asyncjobs.archive.', MD5(DATABASE())), 3600);
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

-- name: complete_and_claim_jobs
-- The finisher's and the dispatcher's query: the completion of many successful executions
-- followed by a claim, in one transaction and one round trip, where a separate finish and
-- claim would cost two of each. A pure claim passes no outcomes ('[]'), a pure finish :limit 0;
-- the statements of the part not wanted are then not sent (see below). Returns one row per
-- claimed job: done_ids (JSON array text of the ids completed, NULL if none), dependents (1 if
-- a queued job depends on one of them, so that the caller claims again once they are runnable)
-- and the job's columns; with nothing claimed, exactly one row whose job columns are NULL
-- (with :limit 0, absent).
-- The claim runs after the completions, in the same transaction and READ COMMITTED, so each of
-- its statements sees them: a named worker whose running job completed here is idle, and its
-- next job is claimed here. Their commit is the claim's commit, so no other transaction can see
-- the worker idle before it sees the next job Started (the argument below holds as is).
-- Locks: the completion waits for the rows it finishes (only a cancel request may hold one, and
-- briefly); it is the transaction's first statement that locks, so a deadlock there is
-- retried by the dialect. The claim takes every lock with SKIP LOCKED and never waits.
-- Completion: each job this node still holds gets its outcome, is copied into the archive, has
-- its summary updated and leaves the queue. :outcomes is a JSON array of {id, attempts, duration_ms,
-- response, response_body, status, logs, notified_date}.
-- An outcome counts for the attempt it ended only (its attempts): written late, after the
-- job came back to this node and was claimed again, it is dropped (the job is not in done_ids).
-- No DELETE ... RETURNING into an INSERT here: 1. the jobs still held are locked and their
-- ids kept in a session variable (with those whose summary shows an earlier attempt's error,
-- and whether a queued job depends on one), 2. copied into the archive with their outcome,
-- 3. their summaries marked, 4. earlier errors cleared, 5. the jobs deleted from the queue,
-- 6. their dependents held for them released.
-- The live row is never updated first: it is about to go, and an UPDATE would rewrite the
-- state indexes for nothing. Every UPDATE here and in the claim joins a JSON list first, so
-- MySQL keeps the new values in an internal temporary table, which goes to disk when a value is
-- a TEXT column: hence the summary's error_message (LONGTEXT) is cleared by an UPDATE of its
-- own, of only the rows that need it (rarely any: the summary mirrors the job's error, so the
-- job's row tells which). Statements 2-5 find the jobs through the list of statement 1
-- (comma-separated, tested with FIND_IN_SET: a JSON_TABLE on the inner side of a join is
-- evaluated again for every outer row), never again by lease: a job is archived and deleted
-- only if locked here.
-- A pure claim (no outcomes) leaves the completion's statements out of the packet, and a pure
-- finish (:limit 0) the claim's (see the dialect's "only if"); the variables the last
-- statement reads are reset first, so it never sees an earlier call's on this connection.
SET @asyncjobs_done = NULL, @asyncjobs_errors = NULL, @asyncjobs_dependents = 0,
    @asyncjobs_claimed = NULL, @asyncjobs_due_by = UTC_TIMESTAMP(6);
/* only if :outcomes */ SELECT GROUP_CONCAT(c.id), GROUP_CONCAT(IF(c.clean, NULL, c.id)),
       COALESCE(MAX(EXISTS (SELECT 1 FROM background_job q
                            FORCE INDEX (ix_background_job_depends_on)
                            WHERE q.depends_on = c.id AND q.state = 'Queued')), 0)
INTO @asyncjobs_done, @asyncjobs_errors, @asyncjobs_dependents
FROM (
    SELECT b.id, b.error_code IS NULL AND b.error IS NULL AS clean
    FROM JSON_TABLE(:outcomes, '$[*]' COLUMNS (
        id BIGINT PATH '$.id', attempts INT PATH '$.attempts')) AS i
    STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
    WHERE b.lease_owner = :node AND b.attempts = i.attempts
    FOR UPDATE
) AS c;
/* only if :outcomes */ INSERT INTO completed_job (
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
    CASE WHEN o.logs IS NULL THEN b.logs ELSE CONCAT(COALESCE(b.logs, ''), o.logs) END,
    :now, b.reply_to, NULL, NULL, b.args, b.meta, b.priority
FROM JSON_TABLE(:outcomes, '$[*]' COLUMNS (
    id BIGINT PATH '$.id',
    duration_ms BIGINT PATH '$.duration_ms',
    response LONGTEXT PATH '$.response',
    response_body LONGTEXT PATH '$.response_body',
    status LONGTEXT PATH '$.status',
    logs LONGTEXT PATH '$.logs',
    notified_date DATETIME(6) PATH '$.notified_date'
)) AS o
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = o.id
WHERE FIND_IN_SET(o.id, @asyncjobs_done);
/* only if :outcomes */ UPDATE JSON_TABLE(:outcomes, '$[*]' COLUMNS (
    id BIGINT PATH '$.id', duration_ms BIGINT PATH '$.duration_ms')) AS o
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = o.id
STRAIGHT_JOIN job_summary s FORCE INDEX (PRIMARY) ON s.id = o.id
SET s.state = 'Completed', s.started_date = b.started_date, s.completed_date = :now,
    s.duration_ms = o.duration_ms, s.attempts = b.attempts, s.error_code = NULL
WHERE FIND_IN_SET(o.id, @asyncjobs_done);
/* only if :outcomes */ UPDATE JSON_TABLE(CONCAT('[', @asyncjobs_errors, ']'), '$[*]' COLUMNS (id BIGINT PATH '$')) AS e
STRAIGHT_JOIN job_summary s FORCE INDEX (PRIMARY) ON s.id = e.id
SET s.error_message = NULL
-- Almost always no row needs it: this constant condition lets MariaDB skip the statement,
-- which otherwise builds an on-disk temporary table (the column is LONGTEXT) for nothing.
WHERE @asyncjobs_errors IS NOT NULL;
/* only if :outcomes */ DELETE b FROM JSON_TABLE(CONCAT('[', @asyncjobs_done, ']'), '$[*]'
                        COLUMNS (id BIGINT PATH '$')) AS d
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = d.id;
-- 6. Their dependents held for them may run now (the claim below sees them): found by a plain
-- read (which never waits for an application's uncommitted dependent), locked by key skipping
-- rows another transaction holds (a cancel locks a dependent, then its parent, which this
-- transaction holds; the recovery's release_dependents takes what is skipped), then changed.
-- The constant condition (no queued dependent, the usual case) lets MariaDB skip both.
/* only if :outcomes */ SELECT JSON_ARRAYAGG(l.id) INTO @asyncjobs_released FROM (
    SELECT b.id
    FROM (SELECT q.id FROM JSON_TABLE(CONCAT('[', @asyncjobs_done, ']'), '$[*]'
                                      COLUMNS (id BIGINT PATH '$')) AS d
          STRAIGHT_JOIN background_job q FORCE INDEX (ix_background_job_depends_on)
                ON q.depends_on = d.id AND q.parent_pending = 1
          WHERE @asyncjobs_dependents = 1) AS h
    STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = h.id
    WHERE b.parent_pending = 1 AND @asyncjobs_dependents = 1
    FOR UPDATE SKIP LOCKED
) AS l;
/* only if :outcomes */ UPDATE JSON_TABLE(@asyncjobs_released, '$[*]'
                        COLUMNS (id BIGINT PATH '$')) AS r
STRAIGHT_JOIN background_job q FORCE INDEX (PRIMARY) ON q.id = r.id
SET q.parent_pending = 0
WHERE @asyncjobs_released IS NOT NULL;
-- The claim: up to :limit runnable jobs in priority-then-age order. A job with a named worker is
-- runnable only when no job of that worker is running and it is the worker's oldest queued job
-- (its head); a job with depends_on only when its parent completed. A job is due once its
-- run_after has passed by the database's clock (UTC_TIMESTAMP(6), as leases are timed, read
-- once: @asyncjobs_due_by), and the report's next_due_in says in how many seconds the next
-- delayed job will be by the same reading (NULL: none), so no job falls between the two.
-- Unlike PostgreSQL (one UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING *),
-- MySQL cannot return what an UPDATE changed, so the claim is four statements (sent together,
-- one round trip, see the dialect):
-- 1. Lock the job_worker rows of named workers with nothing running whose head looks runnable,
--    skipping workers another claim holds. Without this the checks of statement 2, which read
--    committed data only, could race: two processes could each see a worker idle (a claim of
--    another of its jobs not yet committed, e.g. after enqueues committed out of id order) and
--    both start one of its jobs. Holding the worker row makes the decision for a worker one
--    transaction at a time, cluster-wide. The session runs READ COMMITTED, so statement 2, a
--    new statement with a new read view, sees every claim committed before the lock was taken
--    (REPEATABLE READ would keep the snapshot of statement 1, taken before the lock; for the
--    same reason the checks cannot move into statement 1, whose view predates its own locks).
--    The workers are the distinct names in ix_background_job_worker (a loose index scan, one
--    probe per worker that has a job), each looked up in job_worker by key: its cost follows
--    the number of workers with jobs, not the length of the queue, nor every name job_worker
--    ever took (its rows are never deleted: 10k names used once made each claim walk them).
-- 2. Pick and lock the candidates, skipping rows other transactions hold: for each locked
--    worker still idle, its head, found by one probe of ix_background_job_worker (worker, state,
--    id), and runnable if due and its parent completed (a head that is not runnable holds its
--    worker's later jobs back); and the jobs without a worker from ix_background_job_claim
--    (state, worker, parent_pending, run_after, priority DESC, id), which holds them together
--    (worker IS NULL), so no named job is walked, nor a dependent whose parent has not
--    completed (parent_pending = 1): those never delayed (run_after IS NULL) in claim
--    order, and the delayed ones due by now in due order, so no job not yet due is walked
--    either; the due ones by priority among the 1 000 that came due first (a bound: a claim
--    behind an outage's worth of due retries reads 1 000 rows, not all of them), the best
--    200 of them locked in turn until :limit are (so claims beside each other, whatever
--    their limits, find due jobs the others do not hold). The better :limit of all are
--    claimed; the
--    few locked but not chosen stay Queued and are free again at commit. A queue of one
--    worker's jobs thus costs one probe per claim however long it is. The attempt number is
--    read here, under the row lock.
--    Both are found by a plain read first, and only then locked, by primary key, with their
--    state checked again under the lock. A locking read of a secondary index is slow right
--    behind earlier claims: InnoDB visits the clustered row of every entry they left
--    delete-marked and not yet purged. Measured on a drain of 50 per claim, 3 000 to 6 000
--    page reads and 1-3 ms for the unnamed 50, against 7 pages and 0.2 ms read plainly. The
--    plain read takes a window of twice :limit (two parts, as LIMIT takes no expression; not
--    one CTE read twice, which MySQL 8 may materialize whole), so that a claim beside another
--    one, whose jobs are locked and skipped, still finds :limit.
-- 3. Mark them and their summaries Started, in one UPDATE of both tables (a statement of its
--    own per table cost a fifth more server time; statement 2 locked the jobs, so a summary
--    is still locked after its job, as by every other writer): only the columns a claim
--    changes (the summary already mirrors the rest, e.g. the last attempt's error: every
--    transaction that changes those on the job copies them; copying them again would put the
--    LONGTEXT error_message in the multi-table UPDATE's internal temporary table, on disk, see
--    the completion above).
-- 4. Return them.
-- Every lock here is taken with SKIP LOCKED, so a claim never waits and claims cannot deadlock
-- with each other.
-- :skip_named = 1 leaves named workers out: a worker process draining a backlog looks at
-- their heads every so often, not at every claim (a look probes every worker with jobs).
/* only if :limit */ SELECT JSON_ARRAYAGG(l.name) INTO @asyncjobs_workers FROM (
    SELECT w.name
    FROM (SELECT DISTINCT k.worker FROM background_job k FORCE INDEX (ix_background_job_worker)
          WHERE k.worker IS NOT NULL AND :limit > 0 AND :skip_named = 0) AS kw
    STRAIGHT_JOIN job_worker w FORCE INDEX (PRIMARY) ON w.name = kw.worker
    WHERE :limit > 0 AND :skip_named = 0
      -- its head (oldest queued job) looks runnable: due, and its parent completed. Only a
      -- filter (statement 2 checks the same again under the lock): a worker whose head waits is
      -- not kept locked, nor looked at again below, so 1 000 workers each with a retry
      -- waiting out its backoff cost a claim about half what they did
      AND EXISTS (SELECT 1 FROM background_job n FORCE INDEX (PRIMARY)
                  WHERE n.id = (SELECT q.id FROM background_job q
                                FORCE INDEX (ix_background_job_worker)
                                WHERE q.worker = w.name AND q.state = 'Queued'
                                ORDER BY q.id LIMIT 1)
                    AND (n.run_after IS NULL OR n.run_after <= @asyncjobs_due_by)
                    AND (n.depends_on IS NULL
                         OR (SELECT np.state FROM job_summary np WHERE np.id = n.depends_on)
                            = 'Completed'))
      -- one probe per state: with state IN (...) the dependent subquery looks up the worker
      -- alone and reads every job it has queued
      AND NOT EXISTS (SELECT 1 FROM background_job r FORCE INDEX (ix_background_job_worker)
                      WHERE r.worker = w.name AND r.state = 'Started')
      AND NOT EXISTS (SELECT 1 FROM background_job x FORCE INDEX (ix_background_job_worker)
                      WHERE x.worker = w.name AND x.state = 'Executed')
    FOR UPDATE SKIP LOCKED
) AS l;
/* only if :limit */ SELECT JSON_ARRAYAGG(JSON_OBJECT('id', c.id, 'attempts', c.attempts)) INTO @asyncjobs_claimed
FROM (
    SELECT u.id, u.attempts FROM (
        (SELECT n.id, n.priority, n.attempts + 1 AS attempts
         FROM (SELECT (SELECT h.id FROM background_job h FORCE INDEX (ix_background_job_worker)
                       WHERE h.worker = lw.name AND h.state = 'Queued'
                       ORDER BY h.id LIMIT 1) AS id
               FROM JSON_TABLE(@asyncjobs_workers, '$[*]'
                               COLUMNS (name VARCHAR(255) PATH '$')) AS lw
               WHERE NOT EXISTS (SELECT 1 FROM background_job r
                                 FORCE INDEX (ix_background_job_worker)
                                 WHERE r.worker = lw.name AND r.state = 'Started')
                 AND NOT EXISTS (SELECT 1 FROM background_job x
                                 FORCE INDEX (ix_background_job_worker)
                                 WHERE x.worker = lw.name AND x.state = 'Executed')) AS hd
         STRAIGHT_JOIN background_job n FORCE INDEX (PRIMARY) ON n.id = hd.id
         WHERE n.state = 'Queued'
           AND (n.run_after IS NULL OR n.run_after <= @asyncjobs_due_by)
           -- a scalar subquery, so the parent is looked up by key (as EXISTS, MariaDB may
           -- materialize every completed summary)
           AND (n.depends_on IS NULL
                OR (SELECT np.state FROM job_summary np WHERE np.id = n.depends_on) = 'Completed')
         ORDER BY n.priority DESC, n.id
         LIMIT :limit
         FOR UPDATE SKIP LOCKED)
        UNION ALL
        (SELECT cj.id, cj.priority, cj.attempts + 1 AS attempts
         FROM (
             (SELECT j.id FROM background_job j FORCE INDEX (ix_background_job_claim)
              WHERE :named_only = 0 AND j.state = 'Queued' AND j.worker IS NULL
                AND j.parent_pending = 0 AND j.run_after IS NULL
                AND (j.depends_on IS NULL
                     OR (SELECT p.state FROM job_summary p WHERE p.id = j.depends_on) = 'Completed')
              ORDER BY j.priority DESC, j.id
              LIMIT :limit)
             UNION ALL
             (SELECT j.id FROM background_job j FORCE INDEX (ix_background_job_claim)
              WHERE :named_only = 0 AND j.state = 'Queued' AND j.worker IS NULL
                AND j.parent_pending = 0 AND j.run_after IS NULL
                AND (j.depends_on IS NULL
                     OR (SELECT p.state FROM job_summary p WHERE p.id = j.depends_on) = 'Completed')
              ORDER BY j.priority DESC, j.id
              LIMIT :limit, :limit)
         ) AS cw
         STRAIGHT_JOIN background_job cj FORCE INDEX (PRIMARY) ON cj.id = cw.id
         WHERE cj.state = 'Queued' AND cj.worker IS NULL AND cj.run_after IS NULL
         LIMIT :limit
         FOR UPDATE SKIP LOCKED)
        UNION ALL
        (SELECT dj.id, dj.priority, dj.attempts + 1 AS attempts
         FROM (
             SELECT w.id FROM (
                 SELECT j.id, j.priority FROM background_job j FORCE INDEX (ix_background_job_claim)
                 WHERE :named_only = 0 AND j.state = 'Queued' AND j.worker IS NULL
                   AND j.parent_pending = 0 AND j.run_after IS NOT NULL
                   AND j.run_after <= @asyncjobs_due_by
                   AND (j.depends_on IS NULL
                        OR (SELECT p.state FROM job_summary p WHERE p.id = j.depends_on)
                           = 'Completed')
                 ORDER BY j.run_after
                 LIMIT 1000) AS w
             ORDER BY w.priority DESC, w.id
             LIMIT 200
         ) AS dw
         STRAIGHT_JOIN background_job dj FORCE INDEX (PRIMARY) ON dj.id = dw.id
         WHERE dj.state = 'Queued' AND dj.worker IS NULL AND dj.run_after <= @asyncjobs_due_by
         LIMIT :limit
         FOR UPDATE SKIP LOCKED)
    ) AS u
    ORDER BY u.priority DESC, u.id
    LIMIT :limit
) AS c;
/* only if :limit */ UPDATE JSON_TABLE(@asyncjobs_claimed, '$[*]'
                  COLUMNS (id BIGINT PATH '$.id', attempts INT PATH '$.attempts')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
STRAIGHT_JOIN job_summary s FORCE INDEX (PRIMARY) ON s.id = i.id
SET b.state = 'Started', b.attempts = i.attempts, b.started_date = :now,
    b.last_activity_date = :now, b.lease_owner = :node, b.cancel_requested = 0,
    s.state = 'Started', s.attempts = i.attempts, s.started_date = :now;
-- One row even when nothing was claimed: the report, left joined to the claimed jobs. (A user
-- variable reads back as binary: CONVERT makes it text.) A pure finish reads the report alone:
-- no job columns to describe and decode.
/* only if no :limit */ SELECT CONVERT(CONCAT('[', @asyncjobs_done, ']') USING utf8mb4) AS done_ids,
       @asyncjobs_dependents AS dependents;
/* only if :limit */ SELECT CONVERT(CONCAT('[', @asyncjobs_done, ']') USING utf8mb4) AS done_ids,
       @asyncjobs_dependents AS dependents,
       (SELECT TIMESTAMPDIFF(MICROSECOND, @asyncjobs_due_by, MIN(q.run_after)) / 1e6
        FROM background_job q FORCE INDEX (ix_background_job_run_after)
        WHERE q.state = 'Queued' AND q.run_after > @asyncjobs_due_by) AS next_due_in,
       b.*
FROM (SELECT 1 AS one) AS r
LEFT JOIN (JSON_TABLE(@asyncjobs_claimed, '$[*]' COLUMNS (id BIGINT PATH '$.id')) AS i
           STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id) ON TRUE;
