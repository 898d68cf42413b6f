"""The three ways a model answers an evaluation set, all returning what the task endpoint returns
(the Hugging Face pipeline's shape) for each item:

- `PyTorchBackend`: the checkpoint in fp32 through transformers' pipeline, the reference;
- `OnnxBackend`: one exported ONNX variant offline, through the server's own code (the task's
  parse / encode / decode in `server.core.tasks` and `server.core.runtime.OnnxModelRuntime`): what
  the server computes, without HTTP;
- `RestBackend`: a running electra-serve over REST (`POST /v1/<task>`);
- `GrpcBackend`: a running electra-serve over its typed gRPC API (`electra.v1.ElectraService`), the
  same parameters set in the RPC's parameter message and the responses turned back into REST's shapes.

rerank has no pipeline: each item is a query with its documents, and each answer the documents'
scores in their order. PyTorch and ONNX score the pairs here (`score_pairs`: the server's pair
encoding, `toolchain.ranking.encode_pairs`, and the manifest's scoring rule,
`toolchain.ranking.rerank_scores`, on the model's logits; ONNX through the server's runtime); the
REST backend asks the server, one `POST /v1/rerank` per query (`rest_rerank`), the gRPC backend one
`Rerank` call per query (`grpc_rerank`). The server splits a document too long for its window into
windows (its default) where PyTorch and ONNX here cut it (`only_second`): they agree on every pair
that fits `max_seq_len`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evaluation.data import ModelInfo
from toolchain import checkpoint as ckpt
from toolchain.errors import ExportError
from toolchain.ranking import encode_pairs, relevant_index, rerank_scores

PIPELINES = {"classify": "text-classification", "qa": "question-answering", "tag": "token-classification"}


class BackendError(RuntimeError):
    """A model or server that cannot be evaluated (exit code 3)."""


def _chunks(items: list[Any], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def score_pairs(
    items: list[dict[str, Any]],
    max_seq_len: int,
    batch_size: int,
    tokenizer: Any,
    pad_id: int,
    logits_of: Any,
    score_activation: str,
    relevant: int | None,
) -> list[list[float]]:
    """Each rerank item's documents' scores, in their order: every (query, document) pair encoded as
    the server encodes it, run in length-sorted batches (`logits_of(ids, mask, types)` -> [batch,
    1 or 2] logits) and scored by the manifest's rule."""
    pairs = [(item["query"], document) for item in items for document in item["documents"]]
    if not pairs:
        return [[] for _ in items]
    rows = encode_pairs(tokenizer, pairs, max_seq_len)
    logits: list[np.ndarray | None] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    for batch in _chunks(order, batch_size):
        width = max(len(rows[i][0]) for i in batch)
        ids = np.full((len(batch), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        types = np.zeros((len(batch), width), dtype=np.int64)
        for j, i in enumerate(batch):
            n = len(rows[i][0])
            ids[j, :n], mask[j, :n], types[j, :n] = rows[i][0], 1, rows[i][1]
        values = np.asarray(logits_of(ids, mask, types), dtype=np.float32)
        for j, i in enumerate(batch):
            logits[i] = values[j]
    scores = rerank_scores(np.stack(logits), score_activation, relevant)  # type: ignore[arg-type]
    answers, offset = [], 0
    for item in items:
        n = len(item["documents"])
        answers.append([float(v) for v in scores[offset : offset + n]])
        offset += n
    return answers


class PyTorchBackend:
    name = "pytorch"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        task: str,
        device: str = "cpu",
        score_activation: str | None = None,
        relevant_label: str | None = None,
    ) -> None:
        """score_activation, relevant_label: a reranker's scoring rule (the manifest's fields)."""
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # "Device set to use cpu" and friends are noise beside the table
        self.task = task
        self.model = model
        self.tokenizer = tokenizer
        self.score_activation, self.relevant_label = score_activation, relevant_label
        if task == "rerank":  # no pipeline: the pairs are scored here
            if score_activation is None:
                raise ValueError("a reranker's PyTorch backend needs its score activation")
            self.device = device
            self.model.eval().to(device)
            return
        from transformers import pipeline

        self.pipe = pipeline(PIPELINES[task], model=model.eval(), tokenizer=tokenizer, device=device)

    @classmethod
    def load(cls, checkpoint: str, task: str, device: str = "cpu", relevant_label: str | None = None) -> PyTorchBackend:
        try:
            resolved = ckpt.resolve(checkpoint, task, relevant_label=relevant_label)
            return cls(
                ckpt.load_model(resolved),
                ckpt.load_tokenizer(resolved),
                task,
                device,
                resolved.score_activation,
                resolved.relevant_label,
            )
        except ExportError as exc:
            raise BackendError(str(exc)) from exc

    def info(self) -> ModelInfo:
        config = self.model.config
        labels: tuple[str, ...] = ()
        problem_type = None
        if self.task in ("classify", "tag", "rerank"):
            labels = tuple(str(config.id2label[i]) for i in range(config.num_labels))
        if self.task == "classify":
            problem_type = config.problem_type or (
                "regression" if config.num_labels == 1 else "single_label_classification"
            )
        return ModelInfo(
            self.task,
            labels,
            problem_type,
            int(config.max_position_embeddings),
            self.score_activation,
            self.relevant_label,
        )

    def _logits(self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(
                input_ids=torch.from_numpy(ids).to(self.device),
                attention_mask=torch.from_numpy(mask).to(self.device),
                token_type_ids=torch.from_numpy(types).to(self.device),
            )
        return out.logits.float().cpu().numpy()

    def predict(self, items: list[Any], parameters: dict[str, Any], batch_size: int = 16) -> list[Any]:
        if self.task == "rerank":
            info = self.info()
            return score_pairs(
                items,
                int(parameters["max_seq_len"]),
                batch_size,
                self.tokenizer.backend_tokenizer,
                self.tokenizer.pad_token_id or 0,
                self._logits,
                str(self.score_activation),
                relevant_index(info.labels, self.relevant_label) if len(info.labels) == 2 else None,
            )
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
        self.tokenizers = TokenizerPool.from_file(self.model_dir / self.manifest.tokenizer)
        # rerank: the pairs are scored here (`score_pairs`), on the server's runtime; the other tasks
        # through the server's own task code.
        self.task = None if self.manifest.task == "rerank" else TASKS[self.manifest.task]

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
        return ModelInfo(m.task, tuple(m.labels), m.problem_type, m.max_seq_len, m.score_activation, m.relevant_label)

    def predict(self, items: list[Any], parameters: dict[str, Any], batch_size: int = 16) -> list[Any]:
        from server.core.errors import ServeError

        if self.task is None:
            m = self.manifest
            if m.score_activation is None:
                raise BackendError(f"{self.model_dir}: a rerank manifest without a score_activation")
            return score_pairs(
                items,
                min(int(parameters["max_seq_len"]), m.max_seq_len),
                batch_size,
                self.tokenizers.get(),
                self.tokenizers.pad_token_id,
                lambda ids, mask, types: self.runtime.run(ids, mask, types)["logits"],
                m.score_activation,
                relevant_index(m.labels, m.relevant_label) if m.score_activation == "softmax" else None,
            )
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


RERANK_ROUTE = "/v1/rerank"


def rest_rerank(client: Any, model: str, query: str, documents: list[str]) -> list[float]:
    """The documents' scores, in their order, from a running server: the seam between electra-eval and
    the served reranker. One `POST /v1/rerank` with `{"model", "query", "documents"}`, answered
    `{"results": [{"index", "relevance_score"}, ...]}` (best first, as rerank APIs answer), one result
    for every document."""
    import httpx

    try:
        response = client.post(RERANK_ROUTE, json={"model": model, "query": query, "documents": documents})
    except httpx.HTTPError as exc:
        raise BackendError(f"{RERANK_ROUTE}: {exc}") from exc
    if response.status_code != 200:
        raise BackendError(f"{RERANK_ROUTE}: HTTP {response.status_code}: {response.text[:300]}")
    try:
        indexed = [(int(r["index"]), float(r["relevance_score"])) for r in response.json()["results"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"{RERANK_ROUTE}: not a rerank answer ({exc.__class__.__name__}: {exc})") from exc
    return _scores_in_order(RERANK_ROUTE, indexed, len(documents))


class RestBackend:
    """A running electra-serve, over its REST task routes (rerank: `rest_rerank`)."""

    name = "server"

    def __init__(self, url: str, model: str, timeout_s: float = 120.0, transport: Any = None) -> None:
        """transport: an httpx transport in place of the network (tests)."""
        import httpx

        self.url = url.rstrip("/")
        self.model = model
        self.client = httpx.Client(base_url=self.url, timeout=timeout_s, transport=transport)
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
        return ModelInfo(
            d["task"],
            tuple(d.get("labels") or ()),
            d.get("problem_type"),
            int(d["max_seq_len"]),
            d.get("score_activation"),
            d.get("relevant_label"),
        )

    def predict(self, items: list[Any], parameters: dict[str, Any], batch_size: int = 16) -> list[Any]:
        import httpx

        if self.described["task"] == "rerank":  # the server cuts pairs to its own window
            return [rest_rerank(self.client, self.model, item["query"], item["documents"]) for item in items]
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


def _scores_in_order(where: str, indexed: list[tuple[int, float]], documents: int) -> list[float]:
    """A rerank answer's (index, score) results, best first -> the scores in the documents' order."""
    scores = dict(indexed)
    if sorted(scores) != list(range(documents)) or len(indexed) != documents:
        raise BackendError(
            f"{where}: {len(indexed)} results with indices {sorted(scores)[:8]} for {documents} documents"
        )
    return [scores[i] for i in range(documents)]


def grpc_rerank(stub: Any, model: str, query: str, documents: list[str], timeout_s: float) -> list[float]:
    """The documents' scores, in their order, from the typed gRPC API: one `Rerank` call (every
    document ranked: no top_n), the gRPC twin of `rest_rerank`."""
    import grpc

    from proto.electra.v1 import electra_pb2 as pb

    try:
        response = stub.Rerank(pb.RerankRequest(model=model, query=query, documents=documents), timeout=timeout_s)
    except grpc.RpcError as exc:
        raise BackendError(f"Rerank: {_rpc_error(exc)}") from exc
    return _scores_in_order("Rerank", [(int(r.index), float(r.score)) for r in response.results], len(documents))


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
        if self.task == "rerank":  # the server cuts pairs to its own window
            return [
                grpc_rerank(self.stub, self.model, item["query"], item["documents"], self.timeout_s) for item in items
            ]
        answers: list[Any] = []
        for chunk in _chunks(items, batch_size):
            answers.extend(self._call(chunk, parameters))
        return answers

    def close(self) -> None:
        self.channel.close()


def _rpc_error(exc: Any) -> str:
    code, details = exc.code(), exc.details()
    return f"{code.name if code else 'UNKNOWN'}: {details}"
