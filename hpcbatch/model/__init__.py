"""The resources as typed values (AWS Batch shapes) and the job state machine; imports nothing of the project."""
