-- The same tables as SQLite's 0001 (hpcbatch/store/migrations/sqlite), in PostgreSQL's
-- dialect: BYTEA for BLOB, identity columns for AUTOINCREMENT, and ``seq`` standing in
-- for SQLite's rowid (a job's submission order, which FIFO scheduling follows).
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE resources (
    kind TEXT NOT NULL, name TEXT NOT NULL, revision INTEGER NOT NULL,
    status TEXT NOT NULL, doc BYTEA NOT NULL,
    PRIMARY KEY (kind, name, revision)
);
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY, queue TEXT NOT NULL, status TEXT NOT NULL,
    name TEXT NOT NULL, owner TEXT NOT NULL, created_at BIGINT NOT NULL,
    stopped_at BIGINT, doc BYTEA NOT NULL,
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);
CREATE INDEX jobs_by_queue ON jobs (queue, created_at DESC, job_id DESC);
CREATE INDEX jobs_by_created ON jobs (created_at DESC, job_id DESC);
CREATE INDEX jobs_unfinished ON jobs (seq) WHERE status NOT IN ('SUCCEEDED', 'FAILED');
CREATE INDEX jobs_by_stopped ON jobs (stopped_at) WHERE stopped_at IS NOT NULL;
CREATE TABLE job_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, job_id TEXT NOT NULL, at BIGINT NOT NULL,
    status TEXT NOT NULL, reason TEXT
);
CREATE INDEX job_events_by_job ON job_events (job_id, id);
CREATE TABLE scripts (
    script_id TEXT NOT NULL, owner TEXT NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (script_id, owner)
);
CREATE TABLE access_keys (access_key_id TEXT PRIMARY KEY, doc BYTEA NOT NULL);
CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at BIGINT NOT NULL, "user" TEXT NOT NULL,
    operation TEXT NOT NULL, target TEXT, outcome TEXT NOT NULL, doc BYTEA NOT NULL
);
CREATE INDEX audit_by_time ON audit (at);
INSERT INTO meta (key, value) VALUES ('schema_version', '1');
