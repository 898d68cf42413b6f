"""Score every variant on one evaluation set, and judge the drops against the reference
(PyTorch fp32 when it was evaluated, else the fp32 ONNX variant)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from evaluation.data import EvalSet, ModelInfo

DEFAULT_MAX_DROP = 0.5  # points of the primary metric
REFERENCES = ("pytorch", "fp32")


class Backend(Protocol):
    name: str

    def info(self) -> ModelInfo: ...

    def predict(self, items: list[Any], parameters: dict[str, Any], batch_size: int = 16) -> list[Any]: ...


@dataclass
class VariantScore:
    name: str
    metrics: dict[str, float]
    seconds: float
    examples: int

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Evaluation:
    eval_set: EvalSet
    scores: dict[str, VariantScore] = field(default_factory=dict)
    max_drop: float = DEFAULT_MAX_DROP

    @property
    def metric(self) -> str:
        return self.eval_set.metric

    @property
    def reference(self) -> str | None:
        return next((name for name in REFERENCES if name in self.scores), None)

    def drop(self, name: str) -> float | None:
        """Points of the primary metric this variant lost against the reference (None for the reference)."""
        reference = self.reference
        if reference is None or name == reference:
            return None
        return round(self.scores[reference].metrics[self.metric] - self.scores[name].metrics[self.metric], 4)

    def failures(self) -> list[str]:
        out = []
        for name in self.scores:
            drop = self.drop(name)
            if drop is not None and drop > self.max_drop:
                out.append(
                    f"{name} is {drop:.2f} points below {self.reference} on {self.metric} "
                    f"(--max-drop {self.max_drop:g})"
                )
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "task": self.eval_set.task,
            "data": str(self.eval_set.path),
            "data_sha256": self.eval_set.sha256,
            "examples": len(self.eval_set),
            "metric": self.metric,
            "parameters": self.eval_set.parameters,
            "reference": self.reference,
            "max_drop": self.max_drop,
            "variants": {name: score.metrics for name, score in self.scores.items()},
            "examples_per_second": {name: round(s.examples_per_second, 2) for name, s in self.scores.items()},
            "passed": not self.failures(),
        }


def check_same_model(infos: dict[str, ModelInfo]) -> ModelInfo:
    """The one description all variants share; different tasks or label sets mean different models."""
    names = list(infos)
    first = infos[names[0]]
    for name in names[1:]:
        other = infos[name]
        if (other.task, other.labels) != (first.task, first.labels):
            raise ValueError(
                f"{name} is not the same model as {names[0]}: task {other.task} labels {list(other.labels)} "
                f"vs task {first.task} labels {list(first.labels)}"
            )
    # A two-logit reranker scores one label's probability: every variant the same one. (The activation
    # of a one-logit head is monotonic: the rankings, and so the metrics, do not depend on it.)
    relevant = {name: i.relevant_label for name, i in infos.items() if i.relevant_label is not None}
    if len(set(relevant.values())) > 1:
        raise ValueError(
            "the variants score different labels' probabilities: "
            + ", ".join(f"{name} {label!r}" for name, label in relevant.items())
        )
    # Every variant decodes with the same window length: the shortest any of them takes.
    # The problem type from the first that knows it (the gRPC API does not describe it).
    problem_type = next((i.problem_type for i in infos.values() if i.problem_type), None)
    return ModelInfo(
        first.task,
        first.labels,
        problem_type,
        min(i.max_seq_len for i in infos.values()),
        next((i.score_activation for i in infos.values() if i.score_activation), None),
        next(iter(relevant.values()), None),
    )


def score(backend: Backend, eval_set: EvalSet, batch_size: int = 16) -> VariantScore:
    started = time.perf_counter()
    answers = backend.predict(eval_set.items, eval_set.parameters, batch_size)
    seconds = time.perf_counter() - started
    if len(answers) != len(eval_set):
        raise RuntimeError(f"{backend.name}: {len(answers)} answers for {len(eval_set)} examples")
    return VariantScore(backend.name, eval_set.score(answers), seconds, len(eval_set))


def evaluate(
    backends: list[Backend], eval_set: EvalSet, max_drop: float = DEFAULT_MAX_DROP, batch_size: int = 16
) -> Evaluation:
    result = Evaluation(eval_set, max_drop=max_drop)
    for backend in backends:
        result.scores[backend.name] = score(backend, eval_set, batch_size)
    return result
