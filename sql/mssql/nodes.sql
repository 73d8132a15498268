-- Nodes (processes running jobs) hold leases on the jobs they claimed. A node renews its own
-- lease; jobs of a node whose lease ran out are taken back. Leases are timed by the server's
-- clock (SYSUTCDATETIME), never a process's own: processes on other machines have clocks of
-- their own, and one running ahead would see a live node's lease run out and run its jobs a
-- second time.

-- name: renew_node
-- An upsert: update the node's row, insert it if there was none. UPDLOCK, SERIALIZABLE holds
-- the key (or the gap where it would be) to the end of the transaction, so two renewals of a
-- new node cannot both insert.
UPDATE job_node WITH (UPDLOCK, SERIALIZABLE)
SET lease_expires = DATEADD(millisecond, CAST(CEILING(:lease_seconds * 1000) AS int),
                            SYSUTCDATETIME())
WHERE id = :node;
IF @@ROWCOUNT = 0
INSERT INTO job_node (id, host, pid, started_date, lease_expires)
VALUES (:node, :host, :pid, :now,
        DATEADD(millisecond, CAST(CEILING(:lease_seconds * 1000) AS int), SYSUTCDATETIME()));

-- name: delete_node
DELETE FROM job_node WHERE id = :node;

-- name: expire_dead_nodes
-- Forget nodes whose lease ran out long ago.
DELETE FROM job_node WHERE lease_expires < DATEADD(day, -1, SYSUTCDATETIME());

-- name: fail_orphans
-- Jobs held by a dead node that have no retries left fail; the caller archives them. Not
-- those asked to be cancelled: requeue_orphans takes them, and the caller cancels them, as a
-- cancel asks (an explicit cancel ends Cancelled, never Failed). READPAST
-- skips rows another transaction holds (another process recovering them, or their node
-- finishing them after all); the UPDATE re-checks the state of the rows it locks.
UPDATE j
SET state = 'Failed', completed_date = :now, last_activity_date = :now, lease_owner = NULL,
    error_code = 'LeaseExpired',
    error = N'{"message":"the process running the job stopped or lost its lease, and no retries are left","type":"LeaseExpired","traceback":null}'
OUTPUT inserted.id
FROM background_job AS j WITH (READPAST)
WHERE j.state IN ('Started', 'Executed') AND j.attempts > j.retry_limit
  AND j.cancel_requested = 0
  AND NOT EXISTS (SELECT 1 FROM job_node AS n
                  WHERE n.id = j.lease_owner AND n.lease_expires > SYSUTCDATETIME());

-- name: requeue_orphans
-- Jobs held by a dead node go back to the queue; the next claim counts an attempt.
UPDATE j
SET state = 'Queued', lease_owner = NULL, last_activity_date = :now,
    error_code = 'LeaseExpired',
    error = N'{"message":"the process running the job stopped or lost its lease; retrying","type":"LeaseExpired","traceback":null}'
OUTPUT inserted.id
FROM background_job AS j WITH (READPAST)
WHERE j.state IN ('Started', 'Executed')
  AND NOT EXISTS (SELECT 1 FROM job_node AS n
                  WHERE n.id = j.lease_owner AND n.lease_expires > SYSUTCDATETIME());

-- name: requeue_unknown_jobs
-- Jobs leased to :node that it does not know it holds (not in :known, a JSON array of ids) go
-- back to the queue: a claim committed but its reply never reached the node (the connection
-- broke). They never started, so the attempt the claim counted is taken back. The caller makes
-- sure no claim of its own is in flight.
UPDATE j
SET state = 'Queued', lease_owner = NULL, attempts = j.attempts - 1, started_date = NULL,
    last_activity_date = :now
OUTPUT inserted.id
FROM background_job AS j
WHERE j.lease_owner = :node AND j.state = 'Started'
  AND j.id NOT IN (SELECT k.id FROM OPENJSON(:known) WITH (id bigint '$') AS k);
