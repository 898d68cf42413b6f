"""The three ways a model answers an evaluation set, all returning what the task endpoint returns
(the Hugging Face pipeline's shape) for each item:

- `PyTorchBackend`: the checkpoint in fp32 through transformers' pipeline, the reference;
- `OnnxBackend`: one exported ONNX variant offline, through the server's own code (the task's
  parse / encode / decode in `server.core.tasks` and `server.core.runtime.OnnxModelRuntime`): what
  the server computes, without HTTP;
- `RestBackend`: a running electra-serve over REST (`POST /v1/<task>`);
- `GrpcBackend`: a running electra-serve over its typed gRPC API (`electra.v1.ElectraService`), the
  same parameters set in the RPC's parameter message and the responses turned back into REST's shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evaluation.data import ModelInfo
from toolchain import checkpoint as ckpt
from toolchain.errors import ExportError

PIPELINES = {"classify": "text-classification", "qa": "question-answering", "tag": "token-classification"}


class BackendError(RuntimeError):
    """A model or server that cannot be evaluated (exit code 3)."""


def _chunks(items: list[Any], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


class PyTorchBackend:
    name = "pytorch"

    def __init__(self, model: Any, tokenizer: Any, task: str, device: str = "cpu") -> None:
        from transformers import pipeline
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # "Device set to use cpu" and friends are noise beside the table
        self.task = task
        self.model = model
        self.pipe = pipeline(PIPELINES[task], model=model.eval(), tokenizer=tokenizer, device=device)

    @classmethod
    def load(cls, checkpoint: str, task: str, device: str = "cpu") -> PyTorchBackend:
        try:
            resolved = ckpt.resolve(checkpoint, task)
            return cls(ckpt.load_model(resolved), ckpt.load_tokenizer(resolved), task, device)
        except ExportError as exc:
            raise BackendError(str(exc)) from exc

    def info(self) -> ModelInfo:
        config = self.model.config
        labels: tuple[str, ...] = ()
        problem_type = None
        if self.task in ("classify", "tag"):
            labels = tuple(str(config.id2label[i]) for i in range(config.num_labels))
        if self.task == "classify":
            problem_type = config.problem_type or (
                "regression" if config.num_labels == 1 else "single_label_classification"
            )
        return ModelInfo(self.task, labels, problem_type, int(config.max_position_embeddings))

    def predict(self, items: list[Any], parameters: dict[str, Any], batch_size: int = 16) -> list[Any]:
        params = dict(parameters)
        if self.task == "qa":
            # The pipeline takes questions and contexts as two lists.
            answers = self.pipe(
                question=[i["question"] for i in items],
                context=[i["context"] for i in items],
                batch_size=batch_size,
                **params,
            )
            return [answers] if isinstance(answers, dict) else list(answers)
        outputs = self.pipe(items, batch_size=batch_size, **params)
        return [_plain(o) for o in outputs]


def _plain(value: Any) -> Any:
    """numpy scalars to Python, as JSON would carry them."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class OnnxBackend:
    """One variant of an exported model, run as the server runs it."""

    def __init__(
        self, model_dir: Path, precision: str, device: str = "cpu", threads: int = 0, manifest: Any = None
    ) -> None:
        from server.core.errors import ModelLoadError
        from server.core.manifest import Manifest
        from server.core.runtime import OnnxModelRuntime, RuntimeOptions
        from server.core.tasks import TASKS
        from server.core.tokenizer import TokenizerPool

        self.name = precision
        self.model_dir = Path(model_dir)
        try:
            # A model still being exported has its manifest in memory only.
            self.manifest = manifest if manifest is not None else Manifest.read(self.model_dir)
            self.runtime = OnnxModelRuntime(
                self.model_dir,
                self.manifest,
                device,
                precision,
                RuntimeOptions(intra_op_threads=threads),  # type: ignore[arg-type]
            )
        except (OSError, ValueError, ModelLoadError) as exc:
            raise BackendError(f"{model_dir}: {exc}") from exc
        self.task = TASKS[self.manifest.task]
        self.tokenizers = TokenizerPool.from_file(self.model_dir / self.manifest.tokenizer)

    @staticmethod
    def variants(model_dir: Path) -> list[str]:
        from server.core.manifest import PRECISIONS, Manifest

        try:
            manifest = Manifest.read(Path(model_dir))
        except (OSError, ValueError) as exc:
            raise BackendError(f"{model_dir}: cannot read its manifest ({exc})") from exc
        return [p for p in PRECISIONS if p in manifest.variants]

    def info(self) -> ModelInfo:
        m = self.manifest
        return ModelInfo(m.task, tuple(m.labels), m.problem_type, m.max_seq_len)

    def predict(self, items: list[Any], parameters: dict[str, Any], batch_size: int = 16) -> list[Any]:
        from server.core.errors import ServeError

        answers: list[Any] = []
        for chunk in _chunks(items, batch_size):
            try:
                parsed, params, _ = self.task.parse(chunk, parameters, self.manifest)
                encoded = self.task.encode(self.tokenizers.get(), parsed, params, self.manifest)
            except ServeError as exc:
                raise BackendError(f"{self.name}: the server's encoder refused an input: {exc}") from exc
            rows = [row for item in encoded for row in item.rows]
            outputs = self._run(rows, batch_size)
            offset = 0
            for item in encoded:
                n = len(item.rows)
                value = self.task.decode(item, outputs[offset : offset + n], params, self.manifest)
                answers.append(self.task.pipeline_json(value))  # what REST answers, as the server's backend gives
                offset += n
        return answers

    def _run(self, rows: list[Any], batch_size: int) -> list[dict[str, np.ndarray]]:
        """Every row's outputs, padding cut off, computed in length-sorted batches as the server's batcher would."""
        results: list[dict[str, np.ndarray] | None] = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        pad = self.tokenizers.pad_token_id
        for batch in _chunks(order, batch_size):
            width = max(len(rows[i]) for i in batch)
            ids = np.full((len(batch), width), pad, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            types = np.zeros((len(batch), width), dtype=np.int64)
            for j, i in enumerate(batch):
                n = len(rows[i])
                ids[j, :n], mask[j, :n], types[j, :n] = rows[i].input_ids, 1, rows[i].token_type_ids
            outputs = self.runtime.run(ids, mask, types)
            for j, i in enumerate(batch):
                n = len(rows[i])
                results[i] = {
                    name: value[j, :n] if name in self.runtime.sequence_outputs else value[j]
                    for name, value in outputs.items()
                }
        return results  # type: ignore[return-value]


class RestBackend:
    """A running electra-serve, over its REST task routes."""

    name = "server"

    def __init__(self, url: str, model: str, timeout_s: float = 120.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.model = model
        self.client = httpx.Client(base_url=self.url, timeout=timeout_s)
        try:
            response = self.client.get("/v1/models")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise BackendError(f"{self.url}: no electra-serve answering ({exc})") from exc
        described = {m["name"]: m for m in response.json().get("models", [])}
        if model not in described:
            raise BackendError(f"{self.url}: no model {model!r} (serving: {', '.join(sorted(described)) or 'none'})")
        self.described = described[model]

    def info(self) -> ModelInfo:
        d = self.described
        return ModelInfo(d["task"], tuple(d.get("labels") or ()), d.get("problem_type"), int(d["max_seq_len"]))

    def predict(self, items: list[Any], parameters: dict[str, Any], batch_size: int = 16) -> list[Any]:
        import httpx

        answers: list[Any] = []
        route = f"/v1/{self.described['task']}"
        for chunk in _chunks(items, batch_size):
            try:
                response = self.client.post(
                    route, json={"model": self.model, "inputs": chunk, "parameters": parameters}
                )
            except httpx.HTTPError as exc:
                raise BackendError(f"{self.url}{route}: {exc}") from exc
            if response.status_code != 200:
                raise BackendError(f"{self.url}{route}: HTTP {response.status_code}: {response.text[:300]}")
            answers.extend(response.json())
        return answers

    def close(self) -> None:
        self.client.close()


# The proto's parameter messages take what REST's `parameters` object takes, field for field, except:
# classify's `top_k` null (every label) is 0, and tag's `ignore_labels` is a LabelList message.
GRPC_METHODS = {"classify": "Classify", "qa": "AnswerQuestion", "tag": "Tag"}


def grpc_request(task: str, model: str, items: list[Any], parameters: dict[str, Any]) -> Any:
    """One typed gRPC request carrying what the REST backend would POST: the inputs and the parameters."""
    from proto.electra.v1 import electra_pb2 as pb

    if task == "classify":
        request = pb.ClassifyRequest(model=model)
        for item in items:
            text, pair = (item["text"], item.get("text_pair")) if isinstance(item, dict) else (item, None)
            request.inputs.add(text=text, **({"text_pair": pair} if pair else {}))
    elif task == "qa":
        request = pb.AnswerQuestionRequest(model=model)
        for item in items:
            request.inputs.add(question=item["question"], context=item["context"])
    elif task == "tag":
        request = pb.TagRequest(model=model, inputs=items)
    else:
        raise BackendError(f"electra-eval scores classify, qa and tag over gRPC, not {task}")
    message = request.parameters
    fields = message.DESCRIPTOR.fields_by_name
    for name, value in parameters.items():
        if name not in fields:
            raise BackendError(f"the gRPC {GRPC_METHODS[task]} RPC has no parameter {name!r}")
        if name == "top_k" and task == "classify" and value is None:
            message.top_k = 0  # every label
        elif name == "ignore_labels":
            message.ignore_labels.SetInParent()  # set, even when empty: an empty list keeps every label
            message.ignore_labels.labels.extend(value)
        elif value is not None:
            setattr(message, name, value)
    return request


def grpc_answers(task: str, response: Any, parameters: dict[str, Any]) -> list[Any]:
    """A typed gRPC response -> each input's result as REST's JSON gives it (the pipeline's shape)."""
    from server.core.tasks import TASKS

    if task == "classify":
        return [[{"label": s.label, "score": s.score} for s in result.labels] for result in response.results]
    if task == "qa":
        return [
            TASKS["qa"].pipeline_json(
                [{"score": a.score, "start": a.start, "end": a.end, "answer": a.answer} for a in result.answers]
            )
            for result in response.results
        ]
    # Tag: strategy none names each token's `entity` (with its `index`), the others their `entity_group`.
    key = "entity" if parameters.get("aggregation_strategy") == "none" else "entity_group"
    answers = []
    for result in response.results:
        entities = []
        for e in result.entities:
            entity = {key: e.label, "score": e.score}
            if e.HasField("index"):
                entity["index"] = e.index
            entity.update(word=e.word, start=e.start, end=e.end)
            entities.append(entity)
        answers.append(entities)
    return answers


class GrpcBackend:
    """A running electra-serve, over its typed gRPC API (`electra.v1.ElectraService`).

    The model's task, labels, window length and a classifier's problem type come from the same port's
    KServe v2 `ModelConfig`. The channel is
    plaintext, with no API key, like the REST backend's `http://` URLs: meant for a server on loopback
    or a trusted network.
    """

    name = "server-grpc"

    def __init__(self, target: str, model: str, timeout_s: float = 120.0) -> None:
        import grpc

        from proto.electra.v1 import electra_pb2_grpc
        from proto.inference import grpc_service_pb2 as v2
        from proto.inference import grpc_service_pb2_grpc as v2_grpc

        self.target = target
        self.model = model
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(target)
        self.stub = electra_pb2_grpc.ElectraServiceStub(self.channel)
        inference = v2_grpc.GRPCInferenceServiceStub(self.channel)
        try:
            config = inference.ModelConfig(v2.ModelConfigRequest(name=model), timeout=min(timeout_s, 30.0)).config
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                self.close()
                raise BackendError(f"{target}: no electra-serve answering over gRPC ({_rpc_error(exc)})") from exc
            try:
                index = inference.RepositoryIndex(v2.RepositoryIndexRequest(ready=True), timeout=30.0)
                serving = ", ".join(sorted({m.name for m in index.models})) or "none"
            except grpc.RpcError:
                serving = "unknown"
            self.close()
            raise BackendError(f"{target}: no model {model!r} (serving: {serving})") from exc
        parameters = {name: p.string_value for name, p in config.parameters.items()}
        if not {"task", "max_seq_len"} <= parameters.keys():
            self.close()
            raise BackendError(f"{target}: model {model!r}'s configuration names no task or max_seq_len")
        self.task = parameters["task"]
        labels = tuple(parameters["labels"].split(",")) if parameters.get("labels") else ()
        # The same as /v1/models says, which the REST backend reads.
        problem_type = parameters.get("problem_type") or None
        self.described = ModelInfo(self.task, labels, problem_type, int(parameters["max_seq_len"]))

    def info(self) -> ModelInfo:
        return self.described

    def _call(self, items: list[Any], parameters: dict[str, Any]) -> list[Any]:
        import grpc

        method = GRPC_METHODS.get(self.task, self.task)
        request = grpc_request(self.task, self.model, items, parameters)
        try:
            response = getattr(self.stub, method)(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise BackendError(f"{self.target} {method}: {_rpc_error(exc)}") from exc
        return grpc_answers(self.task, response, parameters)

    def predict(self, items: list[Any], parameters: dict[str, Any], batch_size: int = 16) -> list[Any]:
        answers: list[Any] = []
        for chunk in _chunks(items, batch_size):
            answers.extend(self._call(chunk, parameters))
        return answers

    def close(self) -> None:
        self.channel.close()


def _rpc_error(exc: Any) -> str:
    code, details = exc.code(), exc.details()
    return f"{code.name if code else 'UNKNOWN'}: {details}"
