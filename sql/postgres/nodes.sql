-- Nodes (processes running jobs) hold leases on the jobs they claimed. A node renews its own
-- lease; jobs of a node whose lease ran out are taken back. Leases are timed by the server's
-- clock (now()), never a process's own: processes on other machines have clocks of their own,
-- and one running ahead would see a live node's lease run out and run its jobs a second time.

-- name: renew_node
INSERT INTO job_node (id, host, pid, started_date, lease_expires)
VALUES (:node, :host, :pid, :now, now() + make_interval(secs => :lease_seconds))
ON CONFLICT (id) DO UPDATE SET lease_expires = excluded.lease_expires;

-- name: delete_node
DELETE FROM job_node WHERE id = :node;

-- name: expire_dead_nodes
-- Forget nodes whose lease ran out long ago.
DELETE FROM job_node WHERE lease_expires < now() - interval '1 day';

-- name: fail_orphans
-- Jobs held by a dead node that have no retries left fail; the caller archives them. Not
-- those asked to be cancelled: requeue_orphans takes them, and the caller cancels them, as a
-- cancel asks (an explicit cancel ends Cancelled, never Failed).
-- Two processes recovering at once both try each row; the second waits for the first's row lock
-- and its re-check of the newest version (no longer Started) drops the row.
UPDATE background_job j
SET state = 'Failed', completed_date = :now, last_activity_date = :now, lease_owner = NULL,
    error_code = 'LeaseExpired',
    error = jsonb_build_object(
        'message', 'the process running the job stopped or lost its lease, and no retries are left',
        'type', 'LeaseExpired', 'traceback', NULL)
WHERE j.state IN ('Started', 'Executed') AND j.attempts > j.retry_limit
  AND NOT j.cancel_requested
  AND NOT EXISTS (SELECT 1 FROM job_node n WHERE n.id = j.lease_owner AND n.lease_expires > now())
RETURNING j.id;

-- name: requeue_orphans
-- Jobs held by a dead node go back to the queue; the next claim counts an attempt.
UPDATE background_job j
SET state = 'Queued', lease_owner = NULL, last_activity_date = :now, error_code = 'LeaseExpired',
    error = jsonb_build_object('message', 'the process running the job stopped or lost its lease; retrying',
                               'type', 'LeaseExpired', 'traceback', NULL)
WHERE j.state IN ('Started', 'Executed')
  AND NOT EXISTS (SELECT 1 FROM job_node n WHERE n.id = j.lease_owner AND n.lease_expires > now())
RETURNING j.id;

-- name: requeue_unknown_jobs
-- Jobs leased to :node that it does not know it holds (not in :known, a JSON array of ids) go
-- back to the queue: a claim committed but its reply never reached the node (the connection
-- broke). They never started, so the attempt the claim counted is taken back. The caller makes
-- sure no claim of its own is in flight.
UPDATE background_job
SET state = 'Queued', lease_owner = NULL, attempts = attempts - 1, started_date = NULL,
    last_activity_date = :now
WHERE lease_owner = :node AND state = 'Started'
  AND NOT (id = ANY (ARRAY(SELECT jsonb_array_elements_text(:known::jsonb)::bigint)))
RETURNING id;
