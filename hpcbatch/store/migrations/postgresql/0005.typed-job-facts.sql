-- depends: 0003.jobs-by-queue-status
-- Facts that recovery and retries decide on become typed fields of the job document
-- (hpcbatch.model.jobs), read out of the sentences older heads wrote into status reasons:
--   * a retry held for a lost node's fence: ``fence_hold`` {node, attempt_id};
--   * an attempt ended by its timeout: ``timed_out``; one the head gave up on: ``lost``;
--     one ended by TerminateJob (its job is terminated, it did not run out on its own): ``terminated``;
--   * a multi-node try that is ending by a timeout: ``ending.timed_out``.
-- The same as SQLite's 0005; the documents are BYTEA holding JSON text (UTF-8).
UPDATE jobs SET doc = convert_to(jsonb_set(
        convert_from(doc, 'UTF8')::jsonb, '{fence_hold}',
        jsonb_build_object(
            'node', convert_from(doc, 'UTF8')::jsonb #>> '{attempts,-1,node}',
            'attempt_id', convert_from(doc, 'UTF8')::jsonb #>> '{attempts,-1,attempt_id}'))::text, 'UTF8')
WHERE status = 'RUNNABLE'
  AND convert_from(doc, 'UTF8')::jsonb ->> 'status_reason'
      = 'Waiting for node ' || (convert_from(doc, 'UTF8')::jsonb #>> '{attempts,-1,node}') || ' to fence its attempts';

UPDATE jobs SET doc = convert_to(jsonb_set(
        convert_from(doc, 'UTF8')::jsonb, '{attempts}', (
            SELECT coalesce(jsonb_agg(CASE
                WHEN a.value ->> 'status_reason' = 'Job attempt duration exceeded timeout'
                    THEN a.value || '{"timed_out": true}'::jsonb
                WHEN a.value ->> 'status_reason' LIKE 'Node % lost%' OR a.value ->> 'status_reason' LIKE 'Attempt lost%'
                    THEN a.value || '{"lost": true}'::jsonb
                WHEN (convert_from(jobs.doc, 'UTF8')::jsonb ->> 'is_terminated') = 'true'
                 AND a.value ->> 'status_reason' = convert_from(jobs.doc, 'UTF8')::jsonb ->> 'stop_reason'
                    THEN a.value || '{"terminated": true}'::jsonb
                ELSE a.value END ORDER BY a.ordinality), '[]'::jsonb)
            FROM jsonb_array_elements(convert_from(jobs.doc, 'UTF8')::jsonb -> 'attempts') WITH ORDINALITY AS a(value, ordinality)
        ))::text, 'UTF8')
WHERE jsonb_array_length(convert_from(doc, 'UTF8')::jsonb -> 'attempts') > 0
  AND (convert_from(doc, 'UTF8') LIKE '%Job attempt duration exceeded timeout%'
       OR convert_from(doc, 'UTF8') LIKE '% lost%'
       OR (convert_from(doc, 'UTF8')::jsonb ->> 'is_terminated') = 'true');

UPDATE jobs SET doc = convert_to(jsonb_set(
        convert_from(doc, 'UTF8')::jsonb, '{ending,timed_out}', 'true'::jsonb)::text, 'UTF8')
WHERE convert_from(doc, 'UTF8')::jsonb #>> '{ending,status_reason}' = 'Job attempt duration exceeded timeout';
