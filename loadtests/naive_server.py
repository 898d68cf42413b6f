"""The naive baseline: what a user writes in twenty lines. The `transformers` pipeline in PyTorch
behind a plain FastAPI endpoint, one request at a time, no batching, no ONNX.

    python -m loadtests.naive_server --model CHECKPOINT_DIR --port 8010
    curl -s localhost:8010/v1/classify -d '{"inputs": "I loved it"}'

It takes the same body as electra-serve's /v1/classify (`{"inputs": "..."}`), so the bench sends
both servers the very same requests. Benchmark-only: it imports torch, the server never does.
"""

from __future__ import annotations

import argparse
import threading
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class Body(BaseModel):
    inputs: str | list[str]


def build_app(model: str, device: str = "cpu", task: str = "text-classification") -> FastAPI:
    from transformers import pipeline

    if device == "cuda":
        import torch

        # fp16 on the GPU, as the served model: the comparison is about serving, not precision.
        classifier = pipeline(task, model=model, device=0, torch_dtype=torch.float16)
    else:
        classifier = pipeline(task, model=model, device="cpu")
    lock = threading.Lock()  # one request at a time, as a single pipeline object is meant to be used
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/classify")
    def classify(body: Body) -> list[Any]:
        with lock:
            return classifier(body.inputs)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a Hugging Face checkpoint directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.model, args.device), host=args.host, port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
