-- Nodes (processes running jobs) hold leases on the jobs they claimed. A node renews its own
-- lease; jobs of a node whose lease ran out are taken back. Leases are timed by the server's
-- clock (UTC_TIMESTAMP), never a process's own: processes on other machines have clocks of
-- their own, and one running ahead would see a live node's lease run out and run its jobs a
-- second time.

-- name: renew_node
-- MySQL spells upsert ON DUPLICATE KEY UPDATE (VALUES() is deprecated in MySQL 8 and the row
-- alias form is unknown to MariaDB, so the parameter is repeated).
INSERT INTO job_node (id, host, pid, started_date, lease_expires)
VALUES (:node, :host, :pid, :now,
        UTC_TIMESTAMP(6) + INTERVAL ROUND(:lease_seconds * 1000000) MICROSECOND)
ON DUPLICATE KEY UPDATE
    lease_expires = UTC_TIMESTAMP(6) + INTERVAL ROUND(:lease_seconds * 1000000) MICROSECOND;

-- name: delete_node
DELETE FROM job_node WHERE id = :node;

-- name: expire_dead_nodes
-- Forget nodes whose lease ran out long ago.
DELETE FROM job_node WHERE lease_expires < UTC_TIMESTAMP(6) - INTERVAL 1 DAY;

-- name: fail_orphans
-- Jobs held by a dead node that have no retries left fail; the caller archives them. Not
-- those asked to be cancelled: requeue_orphans takes them, and the caller cancels them, as a
-- cancel asks (an explicit cancel ends Cancelled, never Failed).
-- No UPDATE ... RETURNING in MySQL: lock the orphans (skipping rows another process is
-- recovering or finishing), fail exactly those, return their ids.
SELECT JSON_ARRAYAGG(o.id) INTO @asyncjobs_ids FROM (
    SELECT b.id FROM background_job b
    WHERE b.state IN ('Started', 'Executed') AND b.attempts > b.retry_limit
      AND b.cancel_requested = 0
      AND (b.lease_owner IS NULL
           OR b.lease_owner NOT IN (SELECT n.id FROM job_node n WHERE n.lease_expires > UTC_TIMESTAMP(6)))
    FOR UPDATE SKIP LOCKED
) AS o;
UPDATE JSON_TABLE(@asyncjobs_ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
SET b.state = 'Failed', b.completed_date = :now, b.last_activity_date = :now,
    b.lease_owner = NULL, b.error_code = 'LeaseExpired',
    b.error = JSON_OBJECT('message', 'the process running the job stopped or lost its lease, and no retries are left',
                          'type', 'LeaseExpired', 'traceback', NULL);
SELECT i.id FROM JSON_TABLE(@asyncjobs_ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i;

-- name: requeue_orphans
-- Jobs held by a dead node go back to the queue; the next claim counts an attempt.
-- Same shape as fail_orphans, for the same reason.
SELECT JSON_ARRAYAGG(o.id) INTO @asyncjobs_ids FROM (
    SELECT b.id FROM background_job b
    WHERE b.state IN ('Started', 'Executed')
      AND (b.lease_owner IS NULL
           OR b.lease_owner NOT IN (SELECT n.id FROM job_node n WHERE n.lease_expires > UTC_TIMESTAMP(6)))
    FOR UPDATE SKIP LOCKED
) AS o;
UPDATE JSON_TABLE(@asyncjobs_ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
SET b.state = 'Queued', b.lease_owner = NULL, b.last_activity_date = :now,
    b.error_code = 'LeaseExpired',
    b.error = JSON_OBJECT('message', 'the process running the job stopped or lost its lease; retrying',
                          'type', 'LeaseExpired', 'traceback', NULL);
SELECT i.id FROM JSON_TABLE(@asyncjobs_ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i;

-- name: requeue_unknown_jobs
-- Jobs leased to :node that it does not know it holds (not in :known, a JSON array of ids) go
-- back to the queue: a claim committed but its reply never reached the node (the connection
-- broke). They never started, so the attempt the claim counted is taken back. The caller makes
-- sure no claim of its own is in flight. Same shape as requeue_orphans: lock the rows, then
-- update them by primary key.
SELECT JSON_ARRAYAGG(o.id) INTO @asyncjobs_ids FROM (
    SELECT b.id FROM background_job b FORCE INDEX (ix_background_job_lease)
    WHERE b.lease_owner = :node AND b.state = 'Started'
      AND b.id NOT IN (SELECT k.id
                       FROM JSON_TABLE(:known, '$[*]' COLUMNS (id BIGINT PATH '$')) AS k)
    FOR UPDATE
) AS o;
UPDATE JSON_TABLE(@asyncjobs_ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i
STRAIGHT_JOIN background_job b FORCE INDEX (PRIMARY) ON b.id = i.id
SET b.state = 'Queued', b.lease_owner = NULL, b.attempts = b.attempts - 1,
    b.started_date = NULL, b.last_activity_date = :now;
SELECT i.id FROM JSON_TABLE(@asyncjobs_ids, '$[*]' COLUMNS (id BIGINT PATH '$')) AS i;
