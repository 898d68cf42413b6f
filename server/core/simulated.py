"""`--runtime simulated`: a benchmarking aid that stands in for a GPU, never the default.

It answers every model run with correctly shaped outputs after the time a GPU would take by a
simple cost model, a fixed cost per batch plus a cost per padded token, sleeping meanwhile (so it
uses no CPU: what a benchmark then measures is the server's front end, tokenization, batching and
decoding, against a device that keeps up). The defaults put batches of 128-token rows at about
8,000 sequences a second, the rate an H200 runs ELECTRA-large (BERT-large shaped) in fp16 in the
benchmark's GPU target; `--sim-batch-ms` and `--sim-token-us` set them. Outputs are deterministic
functions of the token ids, so results are reproducible, but they mean nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.core.manifest import Manifest
from server.core.runtime import RuntimeOptions, sequence_output_names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CostModel:
    batch_ms: float = 1.5  # kernel launches and the rest of one forward pass, whatever its size
    token_us: float = 1.0  # per padded token (rows x longest row)

    def seconds(self, rows: int, width: int) -> float:
        return (self.batch_ms * 1e-3) + self.token_us * 1e-6 * rows * width


class SimulatedRuntime:
    device = "cuda"  # for every policy that depends on it (batch limits, in-flight batches)

    def __init__(self, manifest: Manifest, precision: str, cost: CostModel) -> None:
        self.providers = ["SimulatedGPU"]
        self.manifest = manifest
        self.precision = precision
        self.cost = cost
        self.sequence_outputs = sequence_output_names(manifest)
        self.labels = max(1, len(manifest.labels))
        self.closed = False

    def run(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> dict[str, np.ndarray]:
        if self.closed:
            raise RuntimeError(f"model {self.manifest.name!r} was unloaded")
        rows, width = input_ids.shape
        started = time.perf_counter()
        values = ((input_ids % 13).astype(np.float32) - 6.0) / 3.0
        task = self.manifest.task
        if task in ("classify", "rerank"):
            pooled = values.mean(axis=1, keepdims=True)
            outputs = {"logits": pooled * np.arange(1, self.labels + 1, dtype=np.float32)}
        elif task == "qa":
            outputs = {"start_logits": values, "end_logits": -values}
        elif task == "tag":
            outputs = {"logits": values[..., None] * np.linspace(-1, 1, self.labels, dtype=np.float32)}
        else:
            outputs = {"logits": values}
        remaining = self.cost.seconds(rows, width) - (time.perf_counter() - started)
        if remaining > 0:
            time.sleep(remaining)
        return outputs

    def warmup(self, buckets: object) -> float:
        return 0.0

    def close(self) -> None:
        self.closed = True


def simulated_factory(cost: CostModel) -> Callable[[Path, Manifest, str, str, RuntimeOptions], SimulatedRuntime]:
    """A runtime factory for the loader: no graph is loaded, the manifest says what to answer."""

    def make(path: Path, manifest: Manifest, device: str, precision: str, options: RuntimeOptions) -> SimulatedRuntime:
        return SimulatedRuntime(manifest, precision, cost)

    log.warning(
        "runtime: SIMULATED (a benchmarking aid: %.2f ms a batch + %.2f us a padded token; outputs mean nothing)",
        cost.batch_ms,
        cost.token_us,
    )
    return make
