"""Fair admission to the GPU limits: by priority, then arrival; a large request is never
overtaken forever by small ones.

Prefect's limit is the hard fence (never more than N GPUs), but its waiters are
unordered: a 4-GPU job can starve behind a stream of 1-GPU jobs, and a high-priority
request can wait behind batch work. So before taking Prefect slots, a request joins
this queue and waits until it is *admissible*:

- entries are ordered by (priority rank, arrival);
- admitted entries hold their slots; the free slots of each pool go to waiting entries
  in order; an entry that does not fit *reserves* what it needs in each of its pools
  (nothing after it may take those slots), so freed slots drain towards the head.

The queue lives in a database shared by every flow process, never in one process's
memory: PostgreSQL for several hosts, SQLite on the NAS for the embedded default (one
host). Every entry carries a heartbeat deadline; the entry of a waiter or holder that
died is dropped once its deadline passes, so a dead process cannot block the queue.
"""
