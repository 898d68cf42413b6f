"""Peers: the servers people would pick instead of electra-serve, run by the bench on the same
model, the same texts and the same load generator (`loadtests/bench --peers all`).

Each peer is installed by the bench into its own virtual environment (PyPI only, pinned
versions) and serves the demo classifier from local files only (no model hub):

- LitServe: a LitAPI around the model's fp32 ONNX graph on onnxruntime (apps/litserve_app.py);
- PyTriton: Triton Inference Server with Python model instances around the same graph
  (apps/pytriton_app.py);
- infinity: its own `infinity_emb v2` server, optimum engine (onnxruntime), on the same graph in
  a Hugging Face layout (the checkpoint's config and tokenizer beside the graph).

This module describes them (what to install, how to launch, what to send); nothing here starts a
process. `loadtests.peers.phase` runs them, `loadtests.peers.figures` reduces the rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APPS = Path(__file__).resolve().parent / "apps"
HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Batching:
    """Dynamic batching for the peers that have the knobs: electra-serve's own CPU defaults (at most
    8 rows a batch, where a row of this model costs least CPU here; a batch waits at most 2 ms to
    fill), so no server is handicapped by a setting the others do not have."""

    max_batch_size: int = 8
    max_delay_ms: float = 2.0
    instances: int = 2  # model workers / instances: one per core, each on one onnxruntime thread


@dataclass(frozen=True, slots=True)
class PeerFiles:
    """The one model every server runs, from local files."""

    model: str  # its name in the repository (the peers serve it under the same name)
    model_dir: Path  # the repository's model directory: manifest.json, the fp32 graph, tokenizer.json
    hf_dir: Path | None = None  # the graph in a Hugging Face layout (infinity), None when not built


@dataclass(frozen=True, slots=True)
class Launch:
    """How the bench starts one peer and talks to it."""

    command: list[str]
    http_port: int
    ready_path: str  # GET: 200 once the model answers
    url_path: str  # POST: one body of the peer's shape a request
    env: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # what the report says it runs with
    cwd: Path | None = None  # where it must start (None: its own cache folder)


# The peers must never reach a model hub, nor send telemetry: every model comes from local files.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    # The bench runs with the repository on PYTHONPATH; a peer's interpreter must not see it.
    "PYTHONPATH": "",
}


class Peer:
    """One peer server: its packages, its command line, its request and response shapes."""

    name: str = ""
    title: str = ""
    package: str = ""  # the PyPI distribution, pinned below
    version: str = ""
    probe_import: str = ""  # what `python -c "import ..."` proves installed
    needs_hf_dir: bool = False

    def requirements(self, onnxruntime_version: str) -> list[list[str]]:
        """pip install steps, in order, into the peer's own venv."""
        raise NotImplementedError

    def launch(self, python: Path, files: PeerFiles, port: Callable[[], int], batching: Batching) -> Launch:
        raise NotImplementedError

    def body(self, model: str, text: str) -> dict[str, Any]:
        """One request carrying one text, in the peer's own shape."""
        raise NotImplementedError

    def answer(self, response: Any) -> tuple[str, float]:
        """The label and score of the (only) text of a response."""
        raise NotImplementedError

    def findings(self, log: str) -> dict[str, str]:
        """What the peer's own log says about how it runs (for the report)."""
        return {}


class LitServePeer(Peer):
    name = "litserve"
    title = "LitServe"
    package = "litserve"
    version = "0.2.19"
    probe_import = "litserve, onnxruntime, tokenizers"

    def requirements(self, onnxruntime_version: str) -> list[list[str]]:
        return [[f"{self.package}=={self.version}", f"onnxruntime=={onnxruntime_version}", "tokenizers", "numpy"]]

    def launch(self, python: Path, files: PeerFiles, port: Callable[[], int], batching: Batching) -> Launch:
        http = port()
        settings = {
            "max_batch_size": batching.max_batch_size,
            "batch_timeout_s": batching.max_delay_ms / 1000,
            "workers_per_device": batching.instances,
            "fast_queue": True,
            "api_servers": f"{batching.instances} (LitServer.run's default: one per worker)",
            "runtime": "onnxruntime fp32, 1 intra-op thread a worker, SkipLayerNormFusion off",
        }
        command = [
            str(python),
            str(APPS / "litserve_app.py"),
            "--model-dir",
            str(files.model_dir),
            "--host",
            HOST,
            "--port",
            str(http),
            "--workers",
            str(batching.instances),
            "--max-batch-size",
            str(batching.max_batch_size),
            "--batch-timeout",
            str(batching.max_delay_ms / 1000),
        ]
        return Launch(command, http, "/health", "/predict", dict(OFFLINE_ENV), settings)

    def body(self, model: str, text: str) -> dict[str, Any]:
        # electra-serve's own /v1/classify body: LitServe reads `inputs`, the model name is ignored.
        return {"model": model, "inputs": text}

    def answer(self, response: Any) -> tuple[str, float]:
        return str(response["label"]), float(response["score"])


class PyTritonPeer(Peer):
    name = "pytriton"
    title = "Triton (PyTriton + onnxruntime)"
    package = "nvidia-pytriton"
    version = "0.7.0"
    probe_import = "pytriton.triton, onnxruntime, tokenizers"
    model_name = "classify"  # apps/pytriton_app.py's MODEL_NAME

    def requirements(self, onnxruntime_version: str) -> list[list[str]]:
        # PyTriton's wheel bundles tritonserver and its Python backend stubs (manylinux_2_35).
        return [[f"{self.package}=={self.version}", f"onnxruntime=={onnxruntime_version}", "tokenizers"]]

    def launch(self, python: Path, files: PeerFiles, port: Callable[[], int], batching: Batching) -> Launch:
        http, grpc, metrics = port(), port(), port()
        settings = {
            "max_batch_size": batching.max_batch_size,
            "max_queue_delay_microseconds": int(batching.max_delay_ms * 1000),
            "instances": batching.instances,
            "protocol": "KServe v2 HTTP/JSON (BYTES input)",
            "runtime": "onnxruntime fp32, 1 intra-op thread an instance, SkipLayerNormFusion off",
        }
        command = [
            str(python),
            str(APPS / "pytriton_app.py"),
            "--model-dir",
            str(files.model_dir),
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
            "--instances",
            str(batching.instances),
            "--max-batch-size",
            str(batching.max_batch_size),
            "--max-queue-delay-us",
            str(int(batching.max_delay_ms * 1000)),
        ]
        ready = f"/v2/models/{self.model_name}/ready"
        return Launch(command, http, ready, f"/v2/models/{self.model_name}/infer", dict(OFFLINE_ENV), settings)

    def body(self, model: str, text: str) -> dict[str, Any]:
        return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [text]}]}

    def answer(self, response: Any) -> tuple[str, float]:
        outputs = {o["name"]: o["data"] for o in response["outputs"]}
        return str(outputs["label"][0]), float(outputs["score"][0])


class InfinityPeer(Peer):
    name = "infinity"
    title = "infinity (infinity-emb, optimum engine)"
    package = "infinity-emb"
    version = "0.0.78"
    probe_import = "infinity_emb, optimum.onnxruntime"
    needs_hf_dir = True

    def requirements(self, onnxruntime_version: str) -> list[list[str]]:
        # optimum imports torch: the pinned CPU build first (an unpinned one is a multi-GB CUDA build).
        # Tried and left: optimum below 2 (its exporter imports a torch.onnx private that torch 2.13
        # no longer has, and its BetterTransformer refuses transformers >= 4.49).
        return [
            ["torch==2.13.0"],
            [f"{self.package}[server,optimum]=={self.version}", f"onnxruntime=={onnxruntime_version}"],
        ]

    def launch(self, python: Path, files: PeerFiles, port: Callable[[], int], batching: Batching) -> Launch:
        if files.hf_dir is None:
            raise ValueError("infinity needs the model in a Hugging Face layout (hf_dir)")
        http = port()
        settings = {
            "engine": "optimum (onnxruntime, its default session options: threads and fusions its own)",
            "batch_size": batching.max_batch_size,
            "batching": "infinity's queue: batches whatever is waiting, no delay knob",
            "device": "cpu",
            "model_warmup": False,
        }
        command = [
            str(Path(python).parent / "infinity_emb"),
            "v2",
            # The model directory as "." with the server started inside it: infinity 0.0.78 hands
            # optimum the graph's path as found under --model-id as `file_name`, and optimum 2 wants a
            # bare file name ("Could not find any ONNX files with target file name /abs/model.onnx").
            "--model-id",
            ".",
            "--served-model-name",
            files.model,
            "--engine",
            "optimum",
            "--device",
            "cpu",
            "--batch-size",
            str(batching.max_batch_size),
            # infinity's warm-up sends a batch of 514-token texts and its classification pipeline does
            # not truncate, so a 512-position model fails to start with it; the bench warms every
            # server up with its own load instead.
            "--no-model-warmup",
            "--host",
            HOST,
            "--port",
            str(http),
            "--log-level",
            "warning",
        ]
        env = {**OFFLINE_ENV, "HF_HOME": str(Path(files.hf_dir).parent / "hf-home")}
        return Launch(command, http, "/health", "/classify", env, settings, cwd=Path(files.hf_dir))

    def body(self, model: str, text: str) -> dict[str, Any]:
        return {"model": model, "input": [text]}

    def findings(self, log: str) -> dict[str, str]:
        # infinity runs optimum's ORTOptimizer on the graph first; with optimum 2 the call fails
        # (an argument optimum dropped) and infinity carries on with the graph as given.
        if "Optimization failed" in log:
            return {"graph_optimisation": "infinity's ORTOptimizer pass failed (optimum 2); the graph as given"}
        return {}

    def answer(self, response: Any) -> tuple[str, float]:
        # One list of {label, score} per input, every label, best first.
        best = max(response["data"][0], key=lambda x: x["score"])
        return str(best["label"]), float(best["score"])


PEERS: dict[str, Peer] = {p.name: p for p in (LitServePeer(), PyTritonPeer(), InfinityPeer())}


def parse_peers(value: str) -> list[str]:
    """`--peers litserve,pytriton` or `--peers all` (argparse type): the names, in the order given."""
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    if names == ["all"]:
        return list(PEERS)
    unknown = [n for n in names if n not in PEERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown peer(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(PEERS)} or all"
        )
    return list(dict.fromkeys(names))


def bodies_lines(peer: Peer, model: str, texts: list[str]) -> bytes:
    """The bench's texts as the peer's request bodies, one JSON body a line (wrk's script input)."""
    return b"".join(json.dumps(peer.body(model, t), ensure_ascii=False).encode() + b"\n" for t in texts)


def venv_python(root: Path) -> Path:
    return Path(root) / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
