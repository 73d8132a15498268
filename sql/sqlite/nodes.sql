-- Nodes (processes running jobs) hold leases on the jobs they claimed. A node renews its own
-- lease; jobs of a node whose lease ran out are taken back. The processes sharing a database
-- file share a machine, and its clock: leases are timed by the processes' clock (the server
-- databases time them by their own).

-- name: renew_node
INSERT INTO job_node (id, host, pid, started_date, lease_expires)
VALUES (:node, :host, :pid, :now,
        strftime('%Y-%m-%d %H:%M:%f000', :now, '+' || :lease_seconds || ' seconds'))
ON CONFLICT (id) DO UPDATE SET lease_expires = excluded.lease_expires;

-- name: delete_node
DELETE FROM job_node WHERE id = :node;

-- name: expire_dead_nodes
-- Forget nodes whose lease ran out long ago.
DELETE FROM job_node WHERE lease_expires < strftime('%Y-%m-%d %H:%M:%f000', 'now', '-1 day');

-- name: fail_orphans
-- Jobs held by a dead node that have no retries left fail; the caller archives them. Not
-- those asked to be cancelled: requeue_orphans takes them, and the caller cancels them, as a
-- cancel asks (an explicit cancel ends Cancelled, never Failed).
UPDATE background_job
SET state = 'Failed', completed_date = :now, last_activity_date = :now, lease_owner = NULL,
    error_code = 'LeaseExpired',
    error = json_object('message', 'the process running the job stopped or lost its lease, and no retries are left',
                        'type', 'LeaseExpired', 'traceback', NULL)
WHERE state IN ('Started', 'Executed') AND attempts > retry_limit AND cancel_requested = 0
  AND (lease_owner IS NULL
       OR lease_owner NOT IN (SELECT id FROM job_node WHERE lease_expires > :now))
RETURNING id;

-- name: requeue_orphans
-- Jobs held by a dead node go back to the queue; the next claim counts an attempt.
UPDATE background_job
SET state = 'Queued', lease_owner = NULL, last_activity_date = :now, error_code = 'LeaseExpired',
    error = json_object('message', 'the process running the job stopped or lost its lease; retrying',
                        'type', 'LeaseExpired', 'traceback', NULL)
WHERE state IN ('Started', 'Executed')
  AND (lease_owner IS NULL
       OR lease_owner NOT IN (SELECT id FROM job_node WHERE lease_expires > :now))
RETURNING id;

-- name: requeue_unknown_jobs
-- Jobs leased to :node that it does not know it holds (not in :known, a JSON array of ids) go
-- back to the queue: a claim committed but its reply never reached the node. They never
-- started, so the attempt the claim counted is taken back. The caller makes sure no claim of
-- its own is in flight.
UPDATE background_job
SET state = 'Queued', lease_owner = NULL, attempts = attempts - 1, started_date = NULL,
    last_activity_date = :now
WHERE lease_owner = :node AND state = 'Started'
  AND id NOT IN (SELECT value FROM json_each(:known))
RETURNING id;
