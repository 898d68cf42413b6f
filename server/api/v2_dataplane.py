"""The KServe v2 data plane, protocol-free: metadata, Triton model config, statistics and
inference over tensors. /v2 HTTP (v2_http) and KServe gRPC (v2_grpc) translate to and from it.

Metadata, config and statistics are plain dicts in Triton's JSON shape, which is also the
protobuf JSON mapping of the gRPC messages, so both protocols serve the same answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np

from server.api import v2_tensors as t
from server.api.model_stats import stats_of
from server.core.errors import ErrorKind, ServeError
from server.core.manifest import Manifest
from server.core.rows import RowOutputs
from server.core.service import InferenceService, LoadedModel, Timings
from server.core.tasks.base import Encoded, TaskHandler

SERVER_NAME = "electra-serve"
MODEL_VERSION = "1"  # every model has exactly one version
PLATFORM = "onnxruntime_onnx"
# What a client may rely on (Triton's names); perf_analyzer reads this list.
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics")
PROTOCOL = "v2"


def server_version() -> str:
    try:
        return metadata.version("electra-serve")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass(slots=True)
class InferOutcome:
    model: LoadedModel
    outputs: list[t.OutputTensor]
    timings: Timings


class _WithLogits:
    """A decode that also keeps each item's raw logits (for the classify LOGITS output)."""

    def __init__(self, task: TaskHandler) -> None:
        self._task = task

    def __call__(self, encoded: Encoded, outputs: list[RowOutputs], params: Any, manifest: Manifest) -> Any:
        logits = np.asarray(outputs[0]["logits"], dtype=np.float32).reshape(-1)
        return self._task.decode(encoded, outputs, params, manifest), logits


class V2Dataplane:
    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.stats = stats_of(service)

    # -- models -----------------------------------------------------------------------------

    def model(self, name: str, version: str = "") -> LoadedModel:
        loaded = self.service.models.get(name)
        if loaded is None:
            raise ServeError(ErrorKind.NOT_FOUND, f"model '{name}' is not loaded")
        if version not in ("", MODEL_VERSION):
            raise ServeError(ErrorKind.NOT_FOUND, f"model '{name}' has no version '{version}' (only {MODEL_VERSION})")
        return loaded

    def model_ready(self, name: str, version: str = "") -> bool:
        self.model(name, version)
        return self.service.model_ready(name)

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        loaded = self.model(name, version)

        def tensor(spec: t.TensorSpec) -> dict[str, Any]:
            return {"name": spec.name, "datatype": spec.datatype, "shape": [-1, *spec.dims]}

        return {
            "name": loaded.name,
            "versions": [MODEL_VERSION],
            "platform": PLATFORM,
            "inputs": [tensor(s) for s in t.input_specs(loaded.manifest.task)],
            "outputs": [tensor(s) for s in t.output_specs(loaded.manifest)],
        }

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        """A minimal Triton model config: what tritonclient and perf_analyzer read."""
        loaded = self.model(name, version)
        settings = self.service.settings
        inputs = [
            {
                "name": s.name,
                "data_type": t.CONFIG_TYPES[s.datatype],
                "format": "FORMAT_NONE",
                "dims": list(s.dims),
                "optional": s.optional,
            }
            for s in t.input_specs(loaded.manifest.task)
        ]
        outputs = [
            {"name": s.name, "data_type": t.CONFIG_TYPES[s.datatype], "dims": list(s.dims)}
            for s in t.output_specs(loaded.manifest)
        ]
        device = loaded.runtime.device
        return {
            "name": loaded.name,
            "platform": PLATFORM,
            "backend": "onnxruntime",
            "version_policy": {"latest": {"num_versions": 1}},
            # Rows per request: the batcher cuts model batches of its own from all requests' rows.
            "max_batch_size": settings.max_inputs_per_request,
            "input": inputs,
            "output": outputs,
            "dynamic_batching": {
                # The model batches this model's batcher really cuts (CPU defaults applied).
                "preferred_batch_size": [loaded.batcher.max_batch_size],
                "max_queue_delay_microseconds": round(settings.max_queue_delay_ms * 1000),
                "default_queue_policy": {"max_queue_size": settings.max_queue_size},
            },
            "instance_group": [
                {
                    "name": f"{loaded.name}_0",
                    "kind": "KIND_GPU" if device == "cuda" else "KIND_CPU",
                    "count": 1,
                }
            ],
            "default_model_filename": loaded.manifest.variants[loaded.runtime.precision].file,
            "parameters": {
                "task": {"string_value": loaded.manifest.task},
                "precision": {"string_value": loaded.runtime.precision},
                "max_seq_len": {"string_value": str(loaded.manifest.max_seq_len)},
                "labels": {"string_value": ",".join(loaded.manifest.labels)},
            },
        }

    def statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        names = [self.model(name, version).name] if name else sorted(self.service.models)
        return {"model_stats": [self.stats.model_stats(n, MODEL_VERSION) for n in names]}

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        index = []
        for name in sorted(self.service.models):
            ready = self.service.model_ready(name)
            if ready_only and not ready:
                continue
            state = "READY" if ready else "UNAVAILABLE"
            reason = "" if ready else ("draining" if self.service.draining else "not ready")
            index.append({"name": name, "version": MODEL_VERSION, "state": state, "reason": reason})
        return index

    # -- inference --------------------------------------------------------------------------

    @staticmethod
    def _parse(loaded: LoadedModel, inputs: list[Any]) -> list[Any]:
        """Validation lives in the task: the rows go through its REST parser."""
        try:
            items, _, _ = loaded.task.parse(inputs, None, loaded.manifest)
        except ServeError as error:
            raise ServeError(error.kind, f"{error.message} (inputs[i] is row i of the input tensors)") from error
        return items

    async def infer(
        self,
        name: str,
        version: str,
        tensors: Sequence[t.InputTensor],
        output_names: Sequence[str] | None,
        deadline: float | None,
    ) -> InferOutcome:
        """Check the tensors, run every row with default parameters, build the requested outputs."""
        started = time.perf_counter()
        loaded = self.model(name, version)
        try:
            task, manifest = loaded.manifest.task, loaded.manifest
            batch = t.gather(t.input_specs(task), tensors, loaded.name)
            chosen = t.requested_outputs(t.output_specs(manifest), output_names, loaded.name)
            items = self._parse(loaded, t.task_inputs(task, batch))
            want_logits = any(spec.name == t.LOGITS for spec in chosen)
            decode = _WithLogits(loaded.task) if want_logits else None
            _, values, timings = await self.service.run_items(loaded.name, items, deadline, decode)
            if want_logits:
                results, logits = [v[0] for v in values], [v[1] for v in values]
            else:
                results, logits = values, None
            outputs = t.build_outputs(chosen, batch, results, logits)
        except ServeError:
            self.stats.record_failure(loaded.name, time.perf_counter() - started)
            raise
        self.stats.record_success(loaded.name, batch.rows, timings)
        return InferOutcome(loaded, outputs, timings)
