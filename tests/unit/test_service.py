"""InferenceService, the one entry point of both APIs, with the real tasks, tokenizer and batcher
over a fake runtime (deterministic logits, injectable blocking and failures); then once with a
real exported model loaded through `load()`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest

from server.core.batcher import DynamicBatcher
from server.core.errors import ErrorKind, ServeError
from server.core.manifest import Manifest
from server.core.service import InferenceService, LoadedModel
from server.core.tasks import TASKS
from server.core.tokenizer import TokenizerPool
from server.metrics import Metrics
from server.settings import Settings


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.synthetic import save_tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(directory)
    return directory / "tokenizer.json"


def manifest(name: str, task: str, max_seq_len: int = 32, labels: list[str] | None = None) -> Manifest:
    return Manifest.model_validate(
        {
            "name": name,
            "task": task,
            "max_seq_len": max_seq_len,
            "labels": labels or [],
            "problem_type": "single_label_classification" if task == "classify" else None,
            "variants": {"fp32": {"file": "model.onnx", "sha256": "0" * 64,
                                  "parity": {"max_abs_error": 1e-6, "top1_agreement": 1.0}}},
            "source": {"model": "fake"},
        }
    )  # fmt: skip


class FakeRuntime:
    """Deterministic logits from the token ids alone, so any batching gives the same per-row result.

    classify: [n, -n, 0] with n the row's real length; discriminate: (id % 7) - 3 per token.
    `gate` (when set) blocks every run until released; `fail` makes runs raise.
    """

    precision, device, providers = "fp32", "cpu", ["CPUExecutionProvider"]

    def __init__(self, task: str) -> None:
        self.task = task
        self.calls: list[tuple[int, int]] = []
        self.gate: threading.Event | None = None
        self.fail = False

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> dict:
        self.calls.append(input_ids.shape)
        if self.gate is not None:
            assert self.gate.wait(10), "the test never released the runtime"
        if self.fail:
            raise RuntimeError("injected failure")
        if self.task == "classify":
            n = attention_mask.sum(axis=1).astype(np.float32)
            return {"logits": np.stack([n, -n, np.zeros_like(n)], axis=1)}
        return {"logits": (input_ids % 7 - 3).astype(np.float32)}


Build = Callable[..., tuple[InferenceService, dict[str, FakeRuntime]]]


@pytest.fixture
def build(tokenizer_file: Path) -> Build:
    """`build(settings, name=task, ...) -> (service, {name: runtime})`; each test drains its service."""

    def make(settings: Settings | None = None, **models: str) -> tuple[InferenceService, dict[str, FakeRuntime]]:
        settings = settings or Settings(max_queue_delay_ms=1)
        service = InferenceService(settings, Metrics())
        runtimes = {}
        for name, task in (models or {"clf": "classify"}).items():
            runtime = FakeRuntime(task)
            labels = ["NEG", "POS", "MID"] if task == "classify" else None
            pool = TokenizerPool.from_file(tokenizer_file)
            batcher = DynamicBatcher(
                runtime.run,
                pad_token_id=pool.pad_token_id,
                max_batch_size=settings.max_batch_size,
                max_batch_tokens=settings.max_batch_tokens,
                max_queue_delay_ms=settings.max_queue_delay_ms,
                max_queue_size=settings.max_queue_size,
                sequence_outputs={"logits"} if task == "discriminate" else set(),
                observer=service.metrics.observer(name),
                name=name,
            )
            loaded = LoadedModel(manifest(name, task, labels=labels), Path("."), TASKS[task], pool, runtime, batcher)
            service.models[name] = loaded  # type: ignore[arg-type]  # a fake runtime
            runtimes[name] = runtime
        service.loaded = True
        return service, runtimes

    return make


def expected_classify(n_tokens: int) -> list[dict[str, Any]]:
    logits = np.array([n_tokens, -n_tokens, 0.0])
    scores = np.exp(logits - logits.max())
    scores /= scores.sum()
    order = np.argsort(-scores, kind="stable")
    return [{"label": ["NEG", "POS", "MID"][i], "score": float(scores[i])} for i in order]


def sample(service: InferenceService, name: str, **labels: str) -> float | None:
    return service.metrics.registry.get_sample_value(name, labels)


async def expect(kind: ErrorKind, awaitable: Any) -> ServeError:
    with pytest.raises(ServeError) as caught:
        await awaitable
    assert caught.value.kind is kind, caught.value
    return caught.value


# ------------------------------------------------------------------ requests


async def test_run_returns_pipeline_shaped_results_in_input_order(build: Build) -> None:
    service, runtimes = build()
    texts = ["a", "a b c d e", "a b", "a b c d e f g h i j"]
    result = await service.run("classify", "clf", texts, {"top_k": None})
    # [CLS] + one token per letter + [SEP]: each item got its own row back, whatever the batch order.
    assert result.value == [expected_classify(len(t.split()) + 2) for t in texts]
    assert (result.model, result.task) == ("clf", "classify")
    single = await service.run("classify", None, "a b", None)
    assert single.value == expected_classify(4)[:1]  # one input, top_k 1 by default
    timings = single.timings
    assert timings.tokenization_s >= 0 and timings.queue_s >= 0 and timings.inference_s >= 0
    assert timings.total_s >= timings.tokenization_s
    assert sum(shape[0] for shape in runtimes["clf"].calls) == 5  # five rows, however batched
    await service.drain(1)


async def test_windows_fan_out_and_come_back_to_their_own_request(build: Build, tokenizer_file: Path) -> None:
    """Long texts become several windows batched together; every token keeps its own score."""
    service, runtimes = build(disc="discriminate")
    texts = [" ".join(f"word{i} number {i * 7}" for i in range(n)) for n in (5, 30, 60)]
    result = await service.run("discriminate", "disc", texts)
    pool = TokenizerPool.from_file(tokenizer_file)
    assert sum(shape[0] for shape in runtimes["disc"].calls) > len(texts)  # windows, not one row per text
    for text, value in zip(texts, result.value, strict=True):
        assert value["tokens"][-1]["end"] == len(text)
        for token in value["tokens"]:
            token_id = pool.get().token_to_id(token["token"])
            assert token["score"] == pytest.approx(1 / (1 + np.exp(-((token_id % 7) - 3))), abs=1e-6)
    await service.drain(1)


async def test_resolve_rules(build: Build) -> None:
    service, _ = build(clf="classify", clf2="classify", disc="discriminate")
    assert service.resolve("discriminate", None).name == "disc"
    assert service.resolve("classify", "clf2").name == "clf2"
    assert service.resolve(None, "disc").name == "disc"  # /models/{name}: the task comes from the model
    message = str(await expect(ErrorKind.BAD_REQUEST, service.run("classify", None, "x")))
    assert "clf" in message and "clf2" in message
    await expect(ErrorKind.NOT_FOUND, service.run("classify", "nope", "x"))
    await expect(ErrorKind.NOT_FOUND, service.run("qa", None, {"question": "a", "context": "b"}))
    await expect(ErrorKind.BAD_REQUEST, service.run("classify", "disc", "x"))
    await expect(ErrorKind.BAD_REQUEST, service.run("classify", 3, "x"))  # type: ignore[arg-type]
    await service.drain(1)


async def test_bad_input_fails_before_any_model_run(build: Build) -> None:
    service, runtimes = build(Settings(max_inputs_per_request=3, max_queue_size=4, max_queue_delay_ms=1))
    await expect(ErrorKind.INVALID_INPUT, service.run("classify", "clf", []))
    await expect(ErrorKind.BAD_REQUEST, service.run("classify", "clf", "x", {"top_k": 0}))
    await expect(ErrorKind.TOO_LARGE, service.run("classify", "clf", ["x"] * 4))  # > max_inputs_per_request
    await expect(ErrorKind.INVALID_INPUT, service.run("classify", "clf", "word " * 40))  # > max_seq_len 32
    assert runtimes["clf"].calls == []
    await service.drain(1)


async def test_request_larger_than_the_queue_is_too_large(build: Build) -> None:
    service, runtimes = build(Settings(max_queue_size=2, max_queue_delay_ms=1), disc="discriminate")
    long_text = " ".join(["token"] * 100)  # four windows of a 32-token model
    await expect(ErrorKind.TOO_LARGE, service.run("discriminate", "disc", long_text))
    assert runtimes["disc"].calls == []
    await service.drain(1)


async def test_deadline_in_the_past_is_deadline_exceeded(build: Build) -> None:
    service, runtimes = build()
    await expect(ErrorKind.DEADLINE_EXCEEDED, service.run("classify", "clf", "x", None, time.monotonic() - 1))
    assert runtimes["clf"].calls == []
    assert sample(service, "electra_dropped_total", model="clf", reason="deadline") == 1
    await service.drain(1)


async def test_a_failing_run_fails_only_its_request(build: Build) -> None:
    service, runtimes = build()
    runtimes["clf"].fail = True
    message = str(await expect(ErrorKind.INTERNAL, service.run("classify", "clf", "x")))
    assert "injected failure" in message
    runtimes["clf"].fail = False
    assert (await service.run("classify", "clf", "x")).value == expected_classify(3)[:1]
    assert service.ready
    await service.drain(1)


async def test_cancelled_request_drops_its_queued_rows(build: Build) -> None:
    service, runtimes = build(Settings(max_queue_delay_ms=5000))  # rows wait for company
    task = asyncio.ensure_future(service.run("classify", "clf", ["a", "b", "c"]))
    batcher = service.models["clf"].batcher
    while batcher.queue_depth < 3:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert batcher.queue_depth == 0
    assert sample(service, "electra_dropped_total", model="clf", reason="cancelled") == 3
    assert runtimes["clf"].calls == []
    await asyncio.wait_for(service.drain(5), 2)  # nothing left in flight: drains at once


async def test_not_loaded_and_draining_are_unavailable(build: Build) -> None:
    service, _ = build()
    service.loaded = False
    assert not service.ready and not service.model_ready("clf")
    error = await expect(ErrorKind.UNAVAILABLE, service.run("classify", "clf", "x"))
    assert error.retry_after_s is not None and error.retry_after_s > 0
    service.loaded = True
    assert service.ready and service.model_ready("clf") and not service.model_ready("nope")
    await service.drain(1)
    assert not service.ready and not service.model_ready("clf")
    error = await expect(ErrorKind.UNAVAILABLE, service.run("classify", "clf", "x"))
    assert "shutting down" in str(error)


async def test_drain_answers_accepted_requests_first(build: Build) -> None:
    service, runtimes = build()
    service.metrics.model_ready.labels("clf").set(1)
    gate = runtimes["clf"].gate = threading.Event()
    accepted = [asyncio.ensure_future(service.run("classify", "clf", f"text {i}")) for i in range(3)]
    while not runtimes["clf"].calls:  # the first batch is running (and blocked)
        await asyncio.sleep(0.001)
    draining = asyncio.ensure_future(service.drain(10))
    await asyncio.sleep(0.05)
    assert not service.ready and not draining.done()
    assert sample(service, "electra_model_ready", model="clf") == 0
    await expect(ErrorKind.UNAVAILABLE, service.run("classify", "clf", "late"))
    gate.set()
    results = await asyncio.gather(*accepted)
    assert [r.value for r in results] == [expected_classify(4)[:1]] * 3
    await asyncio.wait_for(draining, 5)


async def test_ready_follows_the_batcher_health(build: Build) -> None:
    service, _ = build()
    await service.run("classify", "clf", "x")  # starts the batching loop
    assert service.ready
    loop_task = service.models["clf"].batcher._task  # reaching in: nothing public kills the loop
    assert loop_task is not None
    loop_task.cancel()  # the loop dies unexpectedly

    async def died() -> None:
        while service.models["clf"].batcher.healthy:
            await asyncio.sleep(0.001)

    await asyncio.wait_for(died(), 5)
    assert not service.ready and not service.model_ready("clf")
    await expect(ErrorKind.UNAVAILABLE, service.run("classify", "clf", "x"))
    await service.drain(1)


async def test_describe(build: Build) -> None:
    service, _ = build()
    described = service.models["clf"].describe()
    assert described["name"] == "clf" and described["task"] == "classify"
    assert described["labels"] == ["NEG", "POS", "MID"]
    assert (described["precision"], described["device"], described["max_seq_len"]) == ("fp32", "cpu", 32)
    assert described["parity"]["max_abs_error"] == 1e-6 and described["parity"]["top1_agreement"] == 1.0
    await service.drain(1)


# ------------------------------------------------------------------ a real model through load()


async def test_load_a_real_repository(export_model: Callable[..., Path]) -> None:
    model_dir = export_model("classify", labels=["contradiction", "entailment", "neutral"], seed=31)
    settings = Settings(models=model_dir.name, device="cpu", max_queue_delay_ms=1, max_batch_size=4,
                        max_batch_tokens=256)  # fmt: skip
    service = InferenceService(settings, Metrics())
    assert not service.ready
    await service.load(model_dir.parent)
    try:
        assert service.ready and list(service.models) == [model_dir.name]
        assert sample(service, "electra_model_ready", model=model_dir.name) == 1
        described = service.models[model_dir.name].describe()
        assert described["labels"] == ["contradiction", "entailment", "neutral"] and described["device"] == "cpu"
        result = await service.run("classify", None, ["A man eats.", "Nobody eats."], {"top_k": None})
        for scores in result.value:
            assert sorted(e["label"] for e in scores) == ["contradiction", "entailment", "neutral"]
            assert sum(e["score"] for e in scores) == pytest.approx(1.0, abs=1e-6)
    finally:
        await service.drain(5)
    assert not service.ready


async def test_idle_cpu_server_gives_freed_heap_back(
    export_model: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After load() set the glibc thresholds, a second without requests triggers malloc_trim once
    (off the event loop); requests arriving meanwhile postpone it."""
    import threading

    from server.core import service as service_module

    trimmed: list[str] = []
    monkeypatch.setattr(service_module, "IDLE_TRIM_S", 1.0)
    monkeypatch.setattr(service_module, "release_free_heap", lambda: trimmed.append(threading.current_thread().name))
    model_dir = export_model("classify", labels=["contradiction", "entailment", "neutral"], seed=31)
    service = InferenceService(Settings(models=model_dir.name, device="cpu"), Metrics())
    await service.load(model_dir.parent)
    try:
        for _ in range(3):
            await service.run("classify", None, "A man eats.", None)
            await asyncio.sleep(0.01)  # far shorter than the idle time: no trim yet
        assert trimmed == []
        for _ in range(50):  # the trim comes about a second after the last request
            if trimmed:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)
        assert len(trimmed) == 1 and trimmed[0].startswith("tokenize")  # once, not on the event loop
    finally:
        await service.drain(5)


async def test_a_drain_during_loading_stops_it_at_the_next_model(
    export_model: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGTERM while a repository loads: the model being loaded finishes, no further one starts,
    nothing is started or reported ready, and load() returns without an error."""
    import shutil

    from server.core import service as service_module

    model_dir = export_model("classify", labels=["contradiction", "entailment", "neutral"], seed=31)
    for copy in ("first", "second", "third"):
        shutil.copytree(model_dir, tmp_path / copy)
    service = InferenceService(Settings(device="cpu"), Metrics())
    loaded: list[str] = []
    real_runtime = service_module.OnnxModelRuntime

    def runtime_then_sigterm(path: Path, *args: Any) -> Any:
        loaded.append(path.name)
        service.draining = True  # what drain() sets first
        return real_runtime(path, *args)

    monkeypatch.setattr(service_module, "OnnxModelRuntime", runtime_then_sigterm)
    await service.load(tmp_path)
    assert loaded == ["first"]
    assert not service.loaded and not service.ready and service.load_error is None
    assert sample(service, "electra_model_ready", model="first") is None
    await service.drain(1)


async def test_load_fails_clearly_on_a_missing_model(export_model: Callable[..., Path]) -> None:
    model_dir = export_model("classify", labels=["contradiction", "entailment", "neutral"], seed=31)
    service = InferenceService(Settings(models="absent-model", device="cpu"), Metrics())
    error = await expect(ErrorKind.NOT_FOUND, service.load(model_dir.parent))
    assert "absent-model" in str(error) and service.load_error and not service.ready
    await service.drain(1)


def test_cpu_batch_defaults_apply_only_to_limits_the_user_left_unset() -> None:
    from server.core.service import CPU_BATCH_DEFAULTS, batch_limits
    from server.settings import Settings

    cpu = CPU_BATCH_DEFAULTS
    tokens, cells = cpu["max_batch_tokens"], cpu["max_batch_attention"]
    assert batch_limits(Settings(), "cpu") == (cpu["max_batch_size"], tokens, cells)
    assert batch_limits(Settings(), "cuda") == (32, 8192, None)
    assert batch_limits(Settings(max_batch_size=24), "cpu") == (24, tokens, cells)
    assert batch_limits(Settings(max_batch_size=24, max_batch_tokens=4096), "cpu")[:2] == (24, 4096)
    # 0 means no limit, on CPU too once the user says so; on CUDA a set limit applies.
    assert batch_limits(Settings(max_batch_attention=0), "cpu").max_batch_attention is None
    assert batch_limits(Settings(max_batch_attention=50_000), "cuda").max_batch_attention == 50_000


def test_padding_limit_is_the_devices_default_unless_set() -> None:
    from server.core.service import MAX_PADDING_RATIO, padding_limit
    from server.settings import Settings, load_settings

    assert padding_limit(Settings(), "cpu") == MAX_PADDING_RATIO["cpu"] == 0.1
    assert padding_limit(Settings(), "cuda") is None
    assert padding_limit(load_settings(["--max-padding-ratio", "0.25"]), "cpu") == 0.25
    assert padding_limit(load_settings(["--max-padding-ratio", "0"]), "cuda") == 0.0
    assert padding_limit(load_settings(["--max-padding-ratio", "1"]), "cpu") is None  # 1: no limit
    with pytest.raises(pydantic.ValidationError):
        load_settings(["--max-padding-ratio", "1.5"])


def test_short_requests_are_tokenized_inline_and_long_ones_on_the_threads() -> None:
    from server.core.service import _text_chars

    assert _text_chars(["abc", "de"], 1024) == 5
    assert _text_chars([("question?", "a context"), ("q", None)], 1024) == 19
    assert _text_chars(["x" * 600, "y" * 600, "z" * 600], 1024) == 1200  # stops once past the limit
