"""One checkpoint -> one model directory in a repository: export, optimize, convert, gate, write atomically."""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from evaluation.export_hook import EvalRequest, check_request, evaluate_export
from export import onnx as onnx_export
from export import optimize, parity
from server.core.folders import open_to_umask
from server.core.manifest import PRECISIONS, Manifest, Source, Variant
from toolchain import checkpoint as ckpt
from toolchain.errors import ExportError

VARIANT_FILES = {"fp32": "model.fp32.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


class Progress:
    """Step lines on stderr with elapsed time: the slow steps (load, export, fusions, parity) are visible."""

    def __init__(self, name: str, quiet: bool = False) -> None:
        self.name, self.quiet, self.start = name, quiet, time.monotonic()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[electra-export] {self.name}: {message} ({time.monotonic() - self.start:.1f}s)", file=sys.stderr)


def default_name(model: str) -> str:
    base = Path(model.rstrip("/")).name or "model"
    return re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-.") or "model"


def parse_precisions(text: str) -> list[str]:
    wanted = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PRECISIONS]
    if unknown or not wanted:
        raise ExportError(f"unknown precision {','.join(unknown) or '(none)'}: choose from {','.join(PRECISIONS)}")
    return [p for p in PRECISIONS if p in wanted]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tool_versions() -> dict[str, str]:
    versions = {}
    for dist in (
        "electra-serve",
        "torch",
        "transformers",
        "optimum",
        "optimum-onnx",
        "onnx",
        "onnxruntime",
        "tokenizers",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    versions["opset"] = str(onnx_export.OPSET)
    return versions


def export_checkpoint(
    model: str,
    output: Path,
    *,
    name: str | None = None,
    task: str = "auto",
    precisions: list[str] | tuple[str, ...] = ("fp32", "fp16"),
    max_seq_len: int | None = None,
    revision: str | None = None,
    deterministic: bool = False,
    quiet: bool = False,
    evaluation: EvalRequest | None = None,
    relevant_label: str | None = None,
    score_activation: str | None = None,
) -> tuple[Manifest, list[str]]:
    """Export `model` into `output/<name>`. Returns the manifest and any warnings; raises ExportError
    (and DataError for an unusable evaluation file).

    evaluation: score the variants on a labelled file before publishing and record it in the manifest.
    relevant_label, score_activation: a reranker's scoring rule, when not the checkpoint's (see
    `toolchain.checkpoint.rerank_head`).
    """
    name = name or default_name(model)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ExportError(f"invalid model name '{name}': use letters, digits, '.', '_' and '-'")
    progress = Progress(name, quiet)
    checkpoint = ckpt.resolve(model, task, revision, relevant_label=relevant_label, score_activation=score_activation)
    limit = checkpoint.max_position_embeddings
    max_seq_len = max_seq_len or limit
    if not 2 <= max_seq_len <= limit:
        raise ExportError(
            f"--max-seq-len {max_seq_len} must be between 2 and the model's max_position_embeddings {limit}"
        )
    if evaluation is not None:
        check_request(
            evaluation, checkpoint.task, ckpt.labels_of(checkpoint), ckpt.problem_type_of(checkpoint), max_seq_len
        )
    described = f", score {checkpoint.score_activation}" if checkpoint.task == "rerank" else ""
    if checkpoint.relevant_label is not None:
        described += f" of {checkpoint.relevant_label}"
    progress(f"loading {checkpoint.architecture} ({checkpoint.task}{described})")
    if deterministic:
        import torch  # heavy (the export extra): not loaded by importing this module

        torch.set_num_threads(1)
    torch_model = ckpt.load_model(checkpoint)
    tokenizer = ckpt.load_tokenizer(checkpoint)
    config = checkpoint.config
    problem_type = ckpt.problem_type_of(checkpoint)

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=output))
    warnings: list[str] = []
    try:
        progress("exporting ONNX (optimum)")
        raw = onnx_export.export_fp32(torch_model, checkpoint.task, staging / "raw")
        progress("building parity probes and the PyTorch reference")
        rows = parity.build_probes(tokenizer, max_seq_len, pairs_only=checkpoint.task == "rerank")
        pad_id = tokenizer.pad_token_id or 0
        reference = parity.torch_reference(torch_model, checkpoint.task, rows, pad_id)
        variants: dict[str, Variant] = {}
        fused_fp32: dict[str, int] = {}
        fp32_optimized = staging / VARIANT_FILES["fp32"]
        # int8 quantizes the optimized fp32 graph, so fp32 is built (and gated) whenever int8 is asked for.
        built = ["fp32", *precisions] if "int8" in precisions and "fp32" not in precisions else list(precisions)
        for precision in built:
            path = staging / VARIANT_FILES[precision]
            progress(f"{precision}: optimizing and converting")
            if precision == "fp32":
                fused_fp32 = optimize.optimize(raw, path, config.num_attention_heads, config.hidden_size, fp16=False)
                fused = fused_fp32
            elif precision == "fp16":
                fused = optimize.optimize(raw, path, config.num_attention_heads, config.hidden_size, fp16=True)
            else:
                optimize.quantize_int8(fp32_optimized, path)
                fused = fused_fp32
            # Parity gates the files exactly as they ship: graph plus external weights.
            data = optimize.externalize_weights(path)
            progress(f"{precision}: parity against PyTorch on {len(rows)} probes")
            report = parity.check_variant(
                path, checkpoint.task, rows, reference, pad_id, problem_type, threads=1 if deterministic else 0
            )
            failure, warning = parity.gate(precision, report)
            if failure:
                raise ExportError(f"{name}: {failure}")
            if warning:
                warnings.append(f"{name}: {warning}")
            if precision in precisions:
                variants[precision] = Variant(
                    file=path.name,
                    sha256=sha256_of(path),
                    size_bytes=path.stat().st_size,
                    data_file=data.name if data else None,
                    data_sha256=sha256_of(data) if data else None,
                    data_size_bytes=data.stat().st_size if data else 0,
                    parity=report.as_dict(),
                    fused_ops=fused,
                )
            progress(
                f"{precision}: max abs error {report.max_abs_error:.3g}, top-1 agreement {report.top1_agreement:.2%}"
            )
        if "fp32" not in precisions:
            fp32_optimized.unlink(missing_ok=True)
            fp32_optimized.with_name(fp32_optimized.name + ".data").unlink(missing_ok=True)
        shutil.rmtree(staging / "raw")
        tokenizer.backend_tokenizer.save(str(staging / "tokenizer.json"))
        manifest = Manifest(
            name=name,
            task=checkpoint.task,
            max_seq_len=max_seq_len,
            labels=ckpt.labels_of(checkpoint),
            problem_type=problem_type,
            score_activation=checkpoint.score_activation,
            relevant_label=checkpoint.relevant_label,
            tokenizer="tokenizer.json",
            tokenizer_sha256=sha256_of(staging / "tokenizer.json"),
            do_lower_case=bool(getattr(tokenizer, "do_lower_case", True)),
            num_heads=config.num_attention_heads,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            variants=variants,
            source=Source(model=checkpoint.source, revision=checkpoint.revision, architecture=checkpoint.architecture),
            exporter=tool_versions(),
        )
        if evaluation is not None:
            progress(f"evaluating every variant on {evaluation.file}")
            manifest.evaluation, failures = evaluate_export(
                staging, manifest, torch_model, tokenizer, evaluation, threads=1 if deterministic else 0
            )
            scores = ", ".join(
                f"{variant} {values[manifest.evaluation.metric]:.2f}"
                for variant, values in manifest.evaluation.scores.items()
            )
            progress(f"{manifest.evaluation.metric}: {scores}")
            if failures:
                raise ExportError(f"{name}: evaluation failed: {'; '.join(failures)}")
        # The manifest is written last, and the directory appears under its final name in one
        # rename: a killed export leaves only a hidden staging directory that no server loads.
        manifest.write(staging)
        _publish(staging, output / name)
        progress(f"written to {output / name}")
        return manifest, warnings
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, final: Path) -> None:
    open_to_umask(staging)
    if final.exists():
        retired = final.with_name(f".{final.name}.old-{time.time_ns()}")
        final.rename(retired)
        staging.rename(final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(final)
