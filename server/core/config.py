"""What the core needs to know, as plain values: the server's flags are turned into this once
(`server.settings.Settings.core_config`), so nothing under `server/core` reads flags or metrics.

Every default lives here once; the flags' own defaults point at these.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

Device = Literal["cpu", "cuda"]
DeviceChoice = Literal["auto", "cpu", "cuda"]
PrecisionChoice = Literal["auto", "fp32", "fp16", "int8"]


@dataclass(frozen=True)
class BatchPolicy:
    """How one model's batcher cuts batches and bounds its queue (see server.core.batching).

    The defaults suit a GPU; `for_device("cpu")` replaces those the user did not set.
    """

    max_batch_size: int = 32
    max_batch_tokens: int = 8192  # rows x longest row
    max_batch_attention: int | None = None  # rows x longest row^2; None: no limit
    max_queue_delay_ms: float = 2.0
    max_padding_ratio: float | None = None  # None: no limit
    max_queue_size: int = 2048  # rows
    # Most queued rows one request may hold, so that one long request cannot fill the queue
    # for everyone else; None: half the queue.
    max_request_rows: int | None = None
    max_inflight_batches: int = 1
    sort_window: int | None = None  # None: four batches' worth; 0: strict FIFO

    def __post_init__(self) -> None:
        for knob in ("max_batch_size", "max_batch_tokens", "max_queue_size", "max_inflight_batches"):
            if getattr(self, knob) < 1:
                raise ValueError(f"{knob} must be >= 1, got {getattr(self, knob)}")
        if self.max_batch_attention is not None and self.max_batch_attention < 1:
            raise ValueError(f"max_batch_attention must be >= 1 or None, got {self.max_batch_attention}")
        if self.max_padding_ratio is not None and not 0 <= self.max_padding_ratio < 1:
            raise ValueError(f"max_padding_ratio must be within [0, 1), got {self.max_padding_ratio}")
        if self.max_request_rows is not None and self.max_request_rows < 1:
            raise ValueError(f"max_request_rows must be >= 1 or None, got {self.max_request_rows}")

    @property
    def request_rows_limit(self) -> int:
        """The most rows one request may have queued at once."""
        if self.max_request_rows is not None:
            return min(self.max_request_rows, self.max_queue_size)
        return max(1, self.max_queue_size // 2)


GPU_BATCH_DEFAULTS = BatchPolicy()

# CPU defaults for the batch limits a user did not set. Measured on the demo classifier (2 cores,
# length-sorted batches): CPU time per row is lowest at 3-6 rows (9.2 ms vs 11.3 at 1 row) and
# rises past 8 (12.1 ms at 16): bigger batches fall out of the caches. A 2,048-token budget also
# bounds the activations of long rows. Long rows batch badly on a CPU: one thread, demo models,
# CPU time per row of 384 tokens is 84 ms alone and 115 ms in batches of 2 or 4, of 256 tokens
# 53 ms alone or in 2s and 73 ms in 4s, while rows of 128 tokens get cheaper up to 8 (35 -> 25 ms):
# what grows is rows x length^2, each head's attention scores, hence a limit on that (160,000:
# one 384-token window, 2 x 256, 8 x 128). A padded token costs a real one on a CPU, so batches
# stay close in length (10% padding); on CUDA batch size pays and padding is not limited.
# Two batches run at once on a CPU (one per core, each single-threaded), one on CUDA.
CPU_BATCH_DEFAULTS = {
    "max_batch_size": 8,
    "max_batch_tokens": 2048,
    "max_batch_attention": 160_000,
    "max_padding_ratio": 0.1,
    "max_inflight_batches": 2,
}


@dataclass(frozen=True)
class CoreConfig:
    """Everything the loader, the registry and the service need."""

    device: DeviceChoice = "auto"
    precision: PrecisionChoice = "auto"
    tensorrt: bool = False
    # The user's batching limits; names not in `batch_overrides` take the device's defaults.
    batch: BatchPolicy = GPU_BATCH_DEFAULTS
    batch_overrides: frozenset[str] = field(default_factory=frozenset)
    intra_op_threads: int = 0  # 0: cores / concurrent runs
    tokenizer_threads: int = 2
    # Requests with at most this many characters of text are tokenized on the event loop (tens of
    # microseconds, less than the hand-off to a tokenizer thread); 0: always on the threads.
    inline_tokenize_chars: int = 1024
    max_inputs_per_request: int = 512
    # Model rows (stride windows) one request may create; counted before any window is built.
    max_windows_per_request: int = 512
    request_timeout_s: float = 60.0
    # Requests waiting for a tokenizer thread at most; beyond, 429 (not an ever-growing queue).
    tokenize_backlog: int = 256
    # Decoding a request with more rows than this runs off the event loop (QA over many windows,
    # long tag or discriminate texts): a long decode must not hold every other request.
    inline_decode_rows: int = 16
    # Bytes of request bodies an API process holds at once; past it large bodies get 429.
    max_body_buffer_bytes: int = 64 * 1024 * 1024

    def batch_policy(self, device: Device) -> BatchPolicy:
        """The batcher's limits on `device`: what the user set, else the device's default."""
        if device != "cpu":
            return self.batch
        defaults: dict[str, Any] = {k: v for k, v in CPU_BATCH_DEFAULTS.items() if k not in self.batch_overrides}
        return replace(self.batch, **defaults)


DEFAULT_CONFIG = CoreConfig()
