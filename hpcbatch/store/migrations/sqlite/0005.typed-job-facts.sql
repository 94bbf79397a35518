-- depends: 0003.jobs-by-queue-status
-- Facts that recovery and retries decide on become typed fields of the job document
-- (hpcbatch.model.jobs), read out of the sentences older heads wrote into status reasons:
--   * a retry held for a lost node's fence: ``fence_hold`` {node, attempt_id};
--   * an attempt ended by its timeout: ``timed_out``; one the head gave up on: ``lost``;
--     one ended by TerminateJob (its job is terminated, it did not run out on its own): ``terminated``;
--   * a multi-node try that is ending by a timeout: ``ending.timed_out``.
-- The documents are BLOBs of JSON text: read as TEXT, written back as BLOB.
UPDATE jobs SET doc = CAST(json_set(CAST(doc AS TEXT), '$.fence_hold', json_object(
        'node', json_extract(CAST(doc AS TEXT), '$.attempts[#-1].node'),
        'attempt_id', json_extract(CAST(doc AS TEXT), '$.attempts[#-1].attempt_id'))) AS BLOB)
WHERE status = 'RUNNABLE'
  AND json_extract(CAST(doc AS TEXT), '$.status_reason')
      = 'Waiting for node ' || json_extract(CAST(doc AS TEXT), '$.attempts[#-1].node') || ' to fence its attempts';

UPDATE jobs SET doc = CAST(json_set(CAST(doc AS TEXT), '$.attempts', (
        SELECT json_group_array(json(CASE
            WHEN json_extract(a.value, '$.status_reason') = 'Job attempt duration exceeded timeout'
                THEN json_set(a.value, '$.timed_out', json('true'))
            WHEN json_extract(a.value, '$.status_reason') LIKE 'Node % lost%'
              OR json_extract(a.value, '$.status_reason') LIKE 'Attempt lost%'
                THEN json_set(a.value, '$.lost', json('true'))
            WHEN json_extract(CAST(jobs.doc AS TEXT), '$.is_terminated')
             AND json_extract(CAST(jobs.doc AS TEXT), '$.stop_reason') IS NOT NULL
             AND json_extract(a.value, '$.status_reason') = json_extract(CAST(jobs.doc AS TEXT), '$.stop_reason')
                THEN json_set(a.value, '$.terminated', json('true'))
            ELSE a.value END))
        FROM json_each(CAST(jobs.doc AS TEXT), '$.attempts') AS a)) AS BLOB)
WHERE json_array_length(CAST(doc AS TEXT), '$.attempts') > 0
  AND (CAST(doc AS TEXT) LIKE '%Job attempt duration exceeded timeout%'
       OR CAST(doc AS TEXT) LIKE '% lost%'
       OR json_extract(CAST(doc AS TEXT), '$.is_terminated'));

UPDATE jobs SET doc = CAST(json_set(CAST(doc AS TEXT), '$.ending.timed_out', json('true')) AS BLOB)
WHERE json_extract(CAST(doc AS TEXT), '$.ending.status_reason') = 'Job attempt duration exceeded timeout';
