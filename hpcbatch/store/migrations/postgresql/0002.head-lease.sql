-- depends: 0001.initial
-- Active/standby heads (hpcbatch/head/lease.py): one row, the lease. ``epoch`` is the
-- fencing token: it grows by one at every takeover, every order the active head sends
-- carries it, and every store transaction checks it (hpcbatch/store/postgres.py).
CREATE TABLE head_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL,
    holder TEXT NOT NULL,
    url TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO head_lease (id, epoch, holder, url, expires_at) VALUES (1, 0, '', '', now());
