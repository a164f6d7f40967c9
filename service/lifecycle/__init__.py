"""The job lifecycle: the only writer of job and batch status.

Creating jobs and batches, claiming, renewing, finishing, releasing, canceling
(one job or a whole batch), sweeping expired leases and deadlines: every status
change is a conditional UPDATE through `hook.transition`, whose hook writes the
webhook outbox row and moves the batch counters in the same transaction. The
public job, batch and result-line objects are built here too (`views`).
"""
