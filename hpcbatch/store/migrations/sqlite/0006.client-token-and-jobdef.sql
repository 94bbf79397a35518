-- depends: 0003.jobs-by-queue-status
-- SubmitJob idempotency: a job submitted with a client token (the hpcbatch:client-token
-- tag) keeps it in its own row, so the token is committed with the job in one
-- transaction; the unique index makes a second job with the same owner and token
-- impossible. Only whole jobs carry one (array and node children leave it NULL).
ALTER TABLE jobs ADD COLUMN client_token TEXT;
ALTER TABLE jobs ADD COLUMN request_digest TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_client_token ON jobs (owner, client_token) WHERE client_token IS NOT NULL;
-- ListJobs' JOB_DEFINITION filter in SQL: the definition as NAME:REVISION (the end of
-- its ARN, arn:aws:batch:REGION:ACCOUNT:job-definition/NAME:REVISION).
ALTER TABLE jobs ADD COLUMN jobdef TEXT;
UPDATE jobs SET jobdef = (
    SELECT substr(arn, instr(arn, 'job-definition/') + 15)
    FROM (SELECT json_extract(CAST(doc AS TEXT), '$.job_definition') AS arn)
);
