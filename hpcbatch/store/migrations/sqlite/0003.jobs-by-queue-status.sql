-- depends: 0001.initial
-- Covers count_jobs_by_queue_status (metrics, console): an index-only scan, never the docs.
CREATE INDEX IF NOT EXISTS jobs_by_queue_status ON jobs (queue, status, job_id);
