"""LitServe serving the demo classifier (a peer in electra-serve's bench; runs in its own venv).

    python litserve_app.py --model-dir DIR --port 8020 [--workers 2 --max-batch-size 8 --batch-timeout 0.002]
    curl -s 127.0.0.1:8020/predict -d '{"inputs": "I loved it"}'

Configured as LitServe's documentation recommends for throughput: dynamic batching on
(`max_batch_size`, `batch_timeout` on the LitAPI), one inference worker per core on the CPU
(`workers_per_device`), the ZeroMQ queue for hundreds of requests a second (`fast_queue`), and
as many API server processes as workers (LitServer.run's default). It takes electra-serve's
/v1/classify body (`{"inputs": "..."}`; other keys ignored) and answers `{"label", "score"}`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import litserve as ls

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_classifier import OnnxClassifier  # beside this script, not a package


class ClassifyAPI(ls.LitAPI):
    def __init__(self, model_dir: Path, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.model_dir = model_dir

    def setup(self, device: str) -> None:
        # One intra-op thread a worker: the workers are the parallelism, one per core.
        self.classifier = OnnxClassifier(self.model_dir, threads=1)

    # LitServe builds its endpoint from these two signatures: left unannotated, the request is
    # read as JSON and the response written as JSON (its documented default).
    def decode_request(self, request):
        return request["inputs"]

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        labels, scores = self.classifier(list(texts))
        return [{"label": label, "score": score} for label, score in zip(labels, scores, strict=True)]

    def encode_response(self, output):
        return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="the model's directory in the repository")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2, help="inference workers (one per core on the CPU)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=0.002, help="seconds a batch waits to fill")
    args = parser.parse_args()
    server = ls.LitServer(
        ClassifyAPI(args.model_dir, args.max_batch_size, args.batch_timeout),
        accelerator="cpu",
        workers_per_device=args.workers,
        fast_queue=True,
        timeout=30,
    )
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
