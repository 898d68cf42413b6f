"""The offline ceiling: the model alone, no server, on the server's own runtime and inputs.

Rows come from the server's own task encoders (so QA contexts become the very stride windows
the server would batch), and every configuration runs through `OnnxModelRuntime` with the
server's own `runtime_options`, so the session options, the variant and (on CUDA) the IO binding
are the same. Swept: batch size, FIFO or length-sorted order, threads per run, runs in parallel
("sessions": concurrent runs, on one shared session as the server does it).

Two figures per configuration family:
- model only: rows tokenized beforehand (the stricter ceiling: everything the server spends
  outside the model counts against it);
- with tokenization: each worker tokenizes its batch's texts (`encode_batch`) before running
  it, which is the work the server must do too. The served ratio is reported against both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from server.core.batching.execution import pad_rows
from server.core.heap import limit_heap_retention
from server.core.loader import runtime_options
from server.core.manifest import Manifest
from server.core.rows import Row
from server.core.runtime import OnnxModelRuntime
from server.core.tasks import TASKS
from server.core.tokenizer import TokenizerPool
from server.settings import Settings


@dataclass(frozen=True, slots=True)
class OfflineConfig:
    batch_size: int
    order: str  # "fifo" | "sorted"
    threads: int  # intra-op threads per session
    sessions: int  # sessions running batches in parallel

    @property
    def label(self) -> str:
        return f"b{self.batch_size} {self.order} {self.sessions}x{self.threads}t"


@dataclass(frozen=True, slots=True)
class OfflineResult:
    config: OfflineConfig
    seqs_per_s: float
    padding_ratio: float
    tokenize: bool
    seconds: float
    rows: int
    cpu_s: float  # CPU seconds this process spent in the counted pass (all its threads)

    @property
    def seqs_per_cpu_s(self) -> float:
        return self.rows / self.cpu_s if self.cpu_s > 0 else float("nan")


def encode_items(model_dir: Path, items: Sequence[Any], parameters: dict[str, Any] | None = None) -> list[list[Row]]:
    """Each request item's rows, exactly as the server's task encoder produces them."""
    manifest = Manifest.read(model_dir)
    task = TASKS[manifest.task]
    pool = TokenizerPool.from_file(model_dir / manifest.tokenizer)
    parsed, params, _ = task.parse(list(items), parameters, manifest)
    return [e.rows for e in task.encode(pool.get(), parsed, params, manifest)]


def plan_batches(lengths: Sequence[int], batch_size: int, order: str, max_tokens: int | None = None) -> list[list[int]]:
    """Index lists of batches over rows of `lengths`: arrival order, or globally length-sorted.

    A batch is also cut before its padded size (rows x longest) would pass `max_tokens`.
    """
    indices = list(range(len(lengths)))
    if order == "sorted":
        indices.sort(key=lambda i: lengths[i])
    elif order != "fifo":
        raise ValueError(f"unknown order {order!r}")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in indices:
        grown = max(longest, lengths[i])
        if current and (len(current) == batch_size or (max_tokens and grown * (len(current) + 1) > max_tokens)):
            batches.append(current)
            current, longest, grown = [], 0, lengths[i]
        current.append(i)
        longest = grown
    if current:
        batches.append(current)
    return batches


def padding_ratio(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Mean over batches of padded / all tokens (what the server's electra_padding_ratio averages)."""
    ratios = []
    for batch in batches:
        sizes = [lengths[i] for i in batch]
        padded = max(sizes) * len(sizes)
        ratios.append((padded - sum(sizes)) / padded)
    return float(np.mean(ratios)) if ratios else 0.0


def _run_parallel(work: Sequence[Callable[[], None]], workers: int) -> float:
    """Run the callables on `workers` threads pulling from one list; returns wall seconds."""
    lock = threading.Lock()
    position = [0]
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                i = position[0]
                position[0] += 1
            if i >= len(work) or errors:
                return
            try:
                work[i]()
            except BaseException as exc:  # surfaced after join
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


class OfflineBench:
    """Holds one runtime per (threads, sessions) topology and runs configurations over rows."""

    def __init__(self, model_dir: Path, device: str = "cpu", precision: str = "auto") -> None:
        self.model_dir = Path(model_dir)
        self.device = device
        self.precision = precision
        self.manifest = Manifest.read(self.model_dir)
        self.tokenizers = TokenizerPool.from_file(self.model_dir / self.manifest.tokenizer)
        self._runtimes: dict[tuple[int, int], OnnxModelRuntime] = {}

    def runtime(self, threads: int, sessions: int) -> OnnxModelRuntime:
        """The server's runtime options, with `sessions` runs in parallel of `threads` threads each."""
        key = (threads, sessions)
        if key not in self._runtimes:
            # One topology at a time: idle sessions of another keep their thread pools and memory.
            self.close()
            options = replace(
                runtime_options(
                    config := Settings(device=self.device).core_config(), self.device, config.batch_policy(self.device)
                ),
                intra_op_threads=threads,
                cpu_sessions=1,
                runs_per_session=sessions,
                verify_sha256=False,
            )
            if not options.enable_cpu_mem_arena:
                limit_heap_retention()
            rt = OnnxModelRuntime.load(self.model_dir, self.device, self.precision, options)
            rt.warmup([(1, 16), (8, 64)])
            self._runtimes[key] = rt
        return self._runtimes[key]

    def close(self) -> None:
        self._runtimes.clear()

    def measure(
        self,
        rows: Sequence[Row],
        config: OfflineConfig,
        *,
        max_tokens: int | None = None,
        texts: Sequence[Any] | None = None,
        parameters: dict[str, Any] | None = None,
        repeats: int = 1,
    ) -> OfflineResult:
        """One or more full passes over `rows`; the median pass counts.

        texts: when given (one item per row), each batch tokenizes its items first, with the
        server's encoder, instead of using the pre-tokenized rows.
        """
        rt = self.runtime(config.threads, config.sessions)
        lengths = [len(r) for r in rows]
        batches = plan_batches(lengths, config.batch_size, config.order, max_tokens)
        pad_id = self.tokenizers.pad_token_id
        task = TASKS[self.manifest.task]
        params = None
        if texts is not None:
            if len(texts) != len(rows):
                raise ValueError("tokenizing runs need exactly one item per row")
            # The server's typed items (what its front ends hand the encoder), parsed once.
            texts, params, _ = task.parse(list(texts), parameters, self.manifest)

        def job(batch: list[int]) -> Callable[[], None]:
            if texts is None:
                arrays = pad_rows([rows[i] for i in batch], pad_id)
                return lambda: rt.run(*arrays)

            def tokenize_and_run() -> None:
                encoded = task.encode(self.tokenizers.get(), [texts[i] for i in batch], params, self.manifest)
                rt.run(*pad_rows([r for e in encoded for r in e.rows], pad_id))

            return tokenize_and_run

        work = [job(b) for b in batches]
        # Warm the shapes a little so the first pass does not pay for the arena growing.
        _run_parallel(work[: 2 * config.sessions], config.sessions)
        passes = []
        for _ in range(max(1, repeats)):
            cpu0 = time.process_time()
            wall = _run_parallel(work, config.sessions)
            passes.append((wall, time.process_time() - cpu0))
        passes.sort()
        seconds, cpu_s = passes[len(passes) // 2]
        return OfflineResult(
            config=config,
            seqs_per_s=len(rows) / seconds,
            padding_ratio=padding_ratio(lengths, batches),
            tokenize=texts is not None,
            seconds=seconds,
            rows=len(rows),
            cpu_s=cpu_s,
        )


def topologies(cores: int, device: str) -> list[tuple[int, int]]:
    """(threads, sessions) pairs that use the cores fully, plus one single-thread session."""
    if device == "cuda":
        return [(0, 1)]
    pairs = {(1, 1), (cores, 1), (1, cores)}
    if cores >= 4:
        pairs |= {(cores // 2, 2), (2, cores // 2)}
    return sorted(pairs, key=lambda p: (p[1], p[0]))


def grid(batch_sizes: Sequence[int], cores: int, device: str) -> list[OfflineConfig]:
    configs = []
    for threads, sessions in topologies(cores, device):
        for order in ("fifo", "sorted"):
            for b in batch_sizes:
                if order == "fifo" or b > 1:  # batch 1 has no order to choose
                    configs.append(OfflineConfig(b, order, threads, sessions))
    return configs


def best(results: Sequence[OfflineResult]) -> OfflineResult:
    return max(results, key=lambda r: r.seqs_per_s)
