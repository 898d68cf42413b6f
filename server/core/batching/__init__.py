"""Dynamic batching, split by job: `selection` (which rows make a batch: pure), `queue` (waiting
requests, fairness, expiry), `execution` (a batch's run and its retries, on a thread), `batcher`
(the loop, its supervision, answering requests) and `interface` (what the service needs of any
batcher, local or remote)."""

from server.core.batching.batcher import DynamicBatcher
from server.core.batching.execution import is_out_of_memory
from server.core.batching.interface import Batcher, SubmitResult
from server.core.batching.selection import BatchLimits, select_batch

__all__ = ["BatchLimits", "Batcher", "DynamicBatcher", "SubmitResult", "is_out_of_memory", "select_batch"]
