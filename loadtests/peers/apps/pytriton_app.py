"""PyTriton (Triton Inference Server from Python) serving the demo classifier (a peer in
electra-serve's bench; runs in its own venv).

    python pytriton_app.py --model-dir DIR --http-port 8030 --grpc-port 8031 --metrics-port 8032
    curl -s 127.0.0.1:8030/v2/models/classify/infer -d \
        '{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["I loved it"]}]}'

Configured as PyTriton's and Triton's documentation recommend for throughput: Triton's dynamic
batcher on (`max_batch_size`, `max_queue_delay_microseconds`), one model instance per core (a
list of inference callables, each with its own onnxruntime session of one thread), the
`@batch` decorator handing each instance the whole batch as arrays. Input `text` (BYTES, one a
request), outputs `label` (BYTES) and `score` (FP32).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_classifier import OnnxClassifier  # beside this script, not a package

MODEL_NAME = "classify"


def infer_function(classifier: OnnxClassifier) -> Callable[..., dict[str, np.ndarray]]:
    @batch
    def infer(text: np.ndarray) -> dict[str, np.ndarray]:
        texts = [row[0].decode("utf-8") if isinstance(row[0], bytes) else str(row[0]) for row in text]
        labels, scores = classifier(texts)
        return {
            "label": np.array([[label.encode("utf-8")] for label in labels], dtype=np.object_),
            "score": np.array(scores, dtype=np.float32).reshape(-1, 1),
        }

    return infer


def use_this_libpython() -> None:
    """Point the dynamic loader at this interpreter's own libpython before Triton starts.

    Triton's Python backend stub links libpython3.X.so.1.0 and imports this venv's standard library
    and packages. The loader finds the system's libpython first (Debian 12: 3.11.2); with this
    venv on another build of the same version (pyenv's 3.11.7) the stub then ran 3.11.2's C core
    against 3.11.7's stdlib and every model instance failed to start (`_thread.RLock` has no
    `_recursion_count`, in multiprocessing's resource tracker).
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if libdir and (Path(libdir) / f"libpython{version}.so.1.0").exists():
        previous = os.environ.get("LD_LIBRARY_PATH")
        os.environ["LD_LIBRARY_PATH"] = libdir + (f":{previous}" if previous else "")


def _stop_on_sigterm(*_: Any) -> None:
    # Triton.serve() ends cleanly (server and proxies stopped, workspace removed) on KeyboardInterrupt.
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="the model's directory in the repository")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--instances", type=int, default=2, help="model instances (one per core on the CPU)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    use_this_libpython()
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        exit_on_error=True,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=[infer_function(OnnxClassifier(args.model_dir, threads=1)) for _ in range(args.instances)],
            inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="label", dtype=bytes, shape=(1,)), Tensor(name="score", dtype=np.float32, shape=(1,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
