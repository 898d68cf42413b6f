"""The parity gate: the PyTorch reference against each ONNX variant on a fixed probe set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.core.manifest import INPUT_NAMES, OUTPUT_NAMES
from server.core.runtime import CPU_DISABLED_OPTIMIZERS

# Thresholds of the gate. int8 is reported, with a warning below its agreement floor.
FP32_MAX_ABS_ERROR = 1e-4
FP16_MAX_ABS_ERROR = 3e-2
FP16_MIN_TOP1 = 0.99
INT8_WARN_TOP1 = 0.97

PROBE_TEXTS = [
    "",
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "Crème brûlée, naïve façade, jalapeño and Ångström units in São Paulo.",
    "東京は日本の首都です。北京欢迎你！서울도 좋아요.",
    "We did it 🎉🔥👍 — finally!!! 😀 #launch @team",
    "Mixed: résumé, 東京, 🚀 and ASCII in one line; numbers 3.14159 and 2026-11-26.",
    "ELECTRA trains a discriminator to detect tokens replaced by a small generator network.",
]
PROBE_PAIRS = [
    ("Who proposed ELECTRA?", "ELECTRA was proposed by Clark, Luong, Le and Manning in 2020."),
    ("Où est la tour Eiffel ?", "La tour Eiffel se trouve à Paris, au bord de la Seine."),
    ("東京はどこ？", "東京は日本にあります。🗼"),
    ("Is it raining?", ""),
]
LONG_TEXT = " ".join(
    [
        "Replaced token detection asks, for every position, whether the token is original or a plausible",
        "substitute sampled from a generator; café naïve 東京 🎉 are here to exercise normalisation.",
    ]
    * 64
)


@dataclass
class ParityReport:
    max_abs_error: float
    top1_agreement: float
    probes: int

    def as_dict(self) -> dict[str, float | int]:
        return {"max_abs_error": self.max_abs_error, "top1_agreement": self.top1_agreement, "probes": self.probes}


def probe_lengths(max_seq_len: int) -> list[int]:
    lengths = {1, 2, 3, 5, 8, 16, 31, 64, 100, max_seq_len - 1, max_seq_len}
    lengths |= {n for n in (128, 256, 384, 512) if n < max_seq_len}
    return sorted(n for n in lengths if 1 <= n <= max_seq_len)


def build_probes(tokenizer, max_seq_len: int, pairs_only: bool = False) -> list[tuple[list[int], list[int]]]:
    """(input_ids, token_type_ids) rows: texts, pairs, accents, CJK, emoji, and lengths 1..max_seq_len.

    pairs_only (rerank: a cross-encoder only ever sees a query and a document): every text a
    document after a query, lengths 3..max_seq_len with the document cut (`only_second`)."""
    rows: list[tuple[list[int], list[int]]] = []

    def add(encoding) -> None:
        rows.append((list(encoding["input_ids"]), list(encoding["token_type_ids"])))

    if pairs_only:

        def add_pair(query: str, document: str, **options) -> None:
            # A batch of one: transformers takes an empty second text alone for no pair at all.
            encoding = tokenizer([(query, document)], **{"max_length": max_seq_len, **options})
            rows.append((list(encoding["input_ids"][0]), list(encoding["token_type_ids"][0])))

        queries = [question for question, _ in PROBE_PAIRS]
        for i, text in enumerate(PROBE_TEXTS):
            add_pair(queries[i % len(queries)], text, truncation="longest_first")
        for question, context in PROBE_PAIRS:
            add_pair(question, context, truncation="longest_first")
        for length in probe_lengths(max_seq_len):
            if length >= 3:  # from [CLS] [SEP] [SEP]: the shortest pair, an empty query and document
                add_pair("", LONG_TEXT, truncation="only_second", max_length=length)
            if length >= 16:
                add_pair(PROBE_PAIRS[0][0], LONG_TEXT, truncation="only_second", max_length=length)
        return rows
    for text in PROBE_TEXTS:
        add(tokenizer(text, truncation=True, max_length=max_seq_len))
    for question, context in PROBE_PAIRS:
        add(tokenizer(question, context, truncation=True, max_length=max_seq_len))
    for length in probe_lengths(max_seq_len):
        if length == 1:
            rows.append(([tokenizer.cls_token_id], [0]))
            continue
        ids = tokenizer(LONG_TEXT, truncation=True, max_length=length)["input_ids"]
        rows.append((list(ids), [0] * len(ids)))
        if length >= 16:  # room for the question and some context
            add(tokenizer(PROBE_PAIRS[0][0], LONG_TEXT, truncation="only_second", max_length=length))
    return rows


def _batches(rows, pad_id: int, batch_size: int = 8):
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
        types = np.zeros((len(chunk), width), dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        for i, (row_ids, row_types) in enumerate(chunk):
            ids[i, : len(row_ids)] = row_ids
            types[i, : len(row_ids)] = row_types
            mask[i, : len(row_ids)] = 1
        yield ids, mask, types


def torch_reference(model, task: str, rows, pad_id: int) -> list[dict[str, np.ndarray]]:
    import torch

    outputs = []
    with torch.no_grad():
        for ids, mask, types in _batches(rows, pad_id):
            result = model(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                token_type_ids=torch.from_numpy(types),
            )
            outputs.append({name: getattr(result, name).float().numpy() for name in OUTPUT_NAMES[task]})
    return outputs


def _decisions(task: str, name: str, values: np.ndarray, problem_type: str | None) -> np.ndarray:
    """What a user would read off the outputs: the arg-max label, or the sign of a sigmoid logit
    (a one-logit reranker's: relevant, its sigmoid score above 0.5, or not)."""
    if task == "discriminate" or (task == "classify" and problem_type in ("multi_label_classification", "regression")):
        return values > 0
    if task == "rerank" and values.shape[-1] == 1:
        return values > 0
    return values.argmax(axis=-1)


def check_variant(
    onnx_path: Path, task: str, rows, reference, pad_id: int, problem_type: str | None, threads: int = 0
) -> ParityReport:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # The session as the server builds it on the CPU, so parity is measured on the graph it runs.
    session = ort.InferenceSession(
        str(onnx_path),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS),
    )
    max_error = 0.0
    agree = total = 0
    for (ids, mask, types), expected in zip(_batches(rows, pad_id), reference, strict=True):
        got = dict(
            zip(
                OUTPUT_NAMES[task],
                session.run(list(OUTPUT_NAMES[task]), dict(zip(INPUT_NAMES, (ids, mask, types), strict=True))),
                strict=True,
            )
        )
        lengths = mask.sum(axis=1)
        pooled = task in ("classify", "rerank")  # one vector per row, no sequence axis
        for name in OUTPUT_NAMES[task]:
            for i, length in enumerate(lengths):
                # Padded positions are undefined in both; compare what a client would receive.
                want = expected[name][i] if pooled else expected[name][i][:length]
                have = got[name][i] if pooled else got[name][i][:length]
                max_error = max(max_error, float(np.abs(have.astype(np.float64) - want).max(initial=0.0)))
                if task == "qa":
                    agree += int(have.argmax() == want.argmax())
                    total += 1
                else:
                    decided = _decisions(task, name, have, problem_type) == _decisions(task, name, want, problem_type)
                    agree += int(np.sum(decided))
                    total += int(np.size(decided))
    return ParityReport(max_abs_error=max_error, top1_agreement=agree / max(total, 1), probes=len(rows))


def gate(precision: str, report: ParityReport) -> tuple[str | None, str | None]:
    """(failure, warning) for one variant's report."""
    if precision == "fp32" and report.max_abs_error > FP32_MAX_ABS_ERROR:
        return f"fp32 parity failed: max abs error {report.max_abs_error:.3g} > {FP32_MAX_ABS_ERROR:g}", None
    if precision == "fp16":
        if report.max_abs_error > FP16_MAX_ABS_ERROR:
            return f"fp16 parity failed: max abs error {report.max_abs_error:.3g} > {FP16_MAX_ABS_ERROR:g}", None
        if report.top1_agreement < FP16_MIN_TOP1:
            return f"fp16 parity failed: top-1 agreement {report.top1_agreement:.2%} < {FP16_MIN_TOP1:.0%}", None
    if precision == "int8" and report.top1_agreement < INT8_WARN_TOP1:
        return None, (
            f"int8 top-1 agreement {report.top1_agreement:.2%} is below {INT8_WARN_TOP1:.0%} "
            f"(max abs error {report.max_abs_error:.3g}); prefer fp32 on CPU for this model"
        )
    return None, None
