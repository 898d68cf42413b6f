"""PyTorch model -> ONNX with optimum's exporter (dynamic batch and sequence axes)."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from toolchain.errors import ExportError

OPSET = 18

# optimum's task names. `ElectraForPreTraining` goes through token-classification's ONNX config
# (same inputs, `logits` [batch, sequence]) but is exported from the model we loaded, so its own
# replaced-token-detection head is what ends up in the graph; parity proves it.
OPTIMUM_TASK = {
    "discriminate": "token-classification",
    "classify": "text-classification",
    "rerank": "text-classification",  # a cross-encoder is a sequence classifier: the same graph
    "qa": "question-answering",
    "tag": "token-classification",
}


def export_fp32(model, task: str, out_dir: Path) -> Path:
    from optimum.exporters.onnx import onnx_export_from_model

    out_dir.mkdir(parents=True, exist_ok=True)
    # optimum and torch.onnx print a lot; keep it unless the export fails.
    chatter = io.StringIO()
    logging.getLogger("optimum").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(chatter):
            onnx_export_from_model(model, output=out_dir, task=OPTIMUM_TASK[task], opset=OPSET, do_validation=False)
    except Exception as exc:
        raise ExportError(f"ONNX export failed: {exc.__class__.__name__}: {exc}".splitlines()[0]) from exc
    path = out_dir / "model.onnx"
    if not path.is_file():
        raise ExportError(f"ONNX export wrote no model.onnx in {out_dir}")
    return path
