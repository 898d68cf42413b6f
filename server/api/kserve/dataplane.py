"""The KServe v2 data plane, protocol-free: metadata, Triton model config, statistics, the
repository index and inference over tensors. /v2 HTTP (http_routes) and KServe gRPC (grpc_servicer)
translate to and from it.

Metadata, config and statistics are plain dicts in Triton's JSON shape, which is also the
protobuf JSON mapping of the gRPC messages, so both protocols serve the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np

from server.api.kserve import tensors as t
from server.core.manifest import Manifest
from server.core.model import ModelVersion
from server.core.rows import RowOutputs
from server.core.service import Call, InferenceService, TaskRequest
from server.core.tasks.base import Encoded, TaskHandler
from server.core.timings import Timings

SERVER_NAME = "electra-serve"
PLATFORM = "onnxruntime_onnx"
# What a client may rely on (Triton's names); perf_analyzer reads this list.
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "model_repository")
PROTOCOL = "v2"


def shorter_timeout(client_s: float | None, triton_us: Any) -> float | None:
    """The shorter of the client's own timeout (seconds or None) and Triton's `timeout` request
    parameter (microseconds, None when the request has none)."""
    if triton_us is None:
        return client_s
    if not isinstance(triton_us, int) or isinstance(triton_us, bool) or triton_us <= 0:
        raise t.bad("parameter timeout must be a positive integer number of microseconds")
    mine = triton_us / 1_000_000
    return mine if client_s is None else min(client_s, mine)


def server_version() -> str:
    try:
        return metadata.version("electra-serve")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass(slots=True)
class InferOutcome:
    model: str
    version: str
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
        self.catalogue = service.catalogue
        self.models = service.models

    # -- models -----------------------------------------------------------------------------

    def model(self, name: str, version: str = "") -> ModelVersion:
        """A loaded version ("" : the one that serves by default)."""
        return self.catalogue.find(name, version)

    def model_ready(self, name: str, version: str = "") -> bool:
        self.model(name, version)
        return self.service.model_ready(name, version or None)

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        loaded = self.model(name, version)

        def tensor(spec: t.TensorSpec) -> dict[str, Any]:
            return {"name": spec.name, "datatype": spec.datatype, "shape": [-1, *spec.dims]}

        return {
            "name": loaded.name,
            "versions": self.catalogue.version_names(name),
            "platform": PLATFORM,
            "inputs": [tensor(s) for s in t.input_specs(loaded.manifest.task)],
            "outputs": [tensor(s) for s in t.output_specs(loaded.manifest)],
        }

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        """A minimal Triton model config: what tritonclient and perf_analyzer read."""
        loaded = self.model(name, version)
        policy = loaded.batcher.policy
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
        version_policy = self.models.version_policy(name)
        return {
            "name": loaded.name,
            "platform": PLATFORM,
            "backend": "onnxruntime",
            "version_policy": version_policy,
            # Rows per request: the batcher cuts model batches of its own from all requests' rows.
            "max_batch_size": self.service.config.max_inputs_per_request,
            "input": inputs,
            "output": outputs,
            "dynamic_batching": {
                # The model batches this model's batcher really cuts (CPU defaults applied).
                "preferred_batch_size": [policy.max_batch_size],
                "max_queue_delay_microseconds": round(policy.max_queue_delay_ms * 1000),
                "default_queue_policy": {"max_queue_size": policy.max_queue_size},
            },
            "instance_group": [
                {
                    "name": f"{loaded.name}_0",
                    "kind": "KIND_GPU" if loaded.runtime.device == "cuda" else "KIND_CPU",
                    "count": 1,
                }
            ],
            "default_model_filename": loaded.manifest.variants[loaded.runtime.precision].file,  # type: ignore[index]
            "parameters": {
                "task": {"string_value": loaded.manifest.task},
                "precision": {"string_value": loaded.runtime.precision},
                "max_seq_len": {"string_value": str(loaded.manifest.max_seq_len)},
                "labels": {"string_value": ",".join(loaded.manifest.labels)},
                # What /v1/models says of a classifier's head (single- or multi-label, regression).
                **(
                    {"problem_type": {"string_value": loaded.manifest.problem_type}}
                    if loaded.manifest.problem_type
                    else {}
                ),
            },
        }

    async def statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        if name:
            if version:
                keys = [(self.model(name, version).name, version)]
            else:
                self.model(name)
                keys = [(name, v) for v in self.catalogue.version_names(name)]
        else:
            keys = [
                (v.name, v.version) for v in sorted(self.catalogue.versions(), key=lambda v: (v.name, int(v.version)))
            ]
        stats = await self.models.cluster_stats() or self.service.stats
        return {"model_stats": [stats.model_stats(n, v) for n, v in keys]}

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return await self.models.repository_index(ready_only)

    # -- inference --------------------------------------------------------------------------

    async def infer(
        self,
        call: Call,
        name: str,
        version: str,
        tensors: Sequence[t.InputTensor],
        output_names: Sequence[str] | None,
    ) -> InferOutcome:
        """Check the tensors, run every row with default parameters, build the requested outputs."""
        loaded = self.model(name, version)
        call.model, call.task = loaded.name, loaded.manifest.task
        task, manifest = loaded.manifest.task, loaded.manifest
        batch = t.gather(t.input_specs(task), tensors, loaded.name)
        chosen = t.requested_outputs(t.output_specs(manifest), output_names, loaded.name)
        items = t.task_items(task, batch)
        want_logits = any(spec.name == t.LOGITS for spec in chosen)
        # The version is pinned: it was resolved above, with no await in between.
        request = TaskRequest(
            None, loaded.name, version=loaded.version, items=items, given={},
            decode=_WithLogits(loaded.task) if want_logits else None,
        )  # fmt: skip
        result = await self.service.infer(call, request)
        if want_logits:
            values, logits = [v[0] for v in result.values], [v[1] for v in result.values]
        else:
            values, logits = result.values, None
        shaped = [loaded.task.pipeline_json(v) for v in values]
        outputs = t.build_outputs(chosen, batch, shaped, logits)
        return InferOutcome(result.model, result.version, outputs, result.timings)
