-- The schema as it was before versioned migrations (CREATE ... IF NOT EXISTS: a store
-- made by an older hpcbatch is adopted as it is).
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, name TEXT NOT NULL, revision INTEGER NOT NULL,
    status TEXT NOT NULL, doc BLOB NOT NULL,
    PRIMARY KEY (kind, name, revision)
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, queue TEXT NOT NULL, status TEXT NOT NULL,
    name TEXT NOT NULL, owner TEXT NOT NULL, created_at INTEGER NOT NULL,
    stopped_at INTEGER, doc BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_queue ON jobs (queue, created_at DESC, job_id DESC);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at DESC, job_id DESC);
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (status) WHERE status NOT IN ('SUCCEEDED', 'FAILED');
CREATE INDEX IF NOT EXISTS jobs_by_stopped ON jobs (stopped_at) WHERE stopped_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS job_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, at INTEGER NOT NULL,
    status TEXT NOT NULL, reason TEXT
);
CREATE INDEX IF NOT EXISTS job_events_by_job ON job_events (job_id, id);
CREATE TABLE IF NOT EXISTS scripts (
    script_id TEXT NOT NULL, owner TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (script_id, owner)
);
CREATE TABLE IF NOT EXISTS access_keys (access_key_id TEXT PRIMARY KEY, doc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, user TEXT NOT NULL,
    operation TEXT NOT NULL, target TEXT, outcome TEXT NOT NULL, doc BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit (at);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
