"""InferenceService, the one request path of every front end, with the real loader, registry,
tasks, tokenizer and batcher over a fake runtime (deterministic logits, injectable blocking and
failures); then once with a real exported model.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest

from server.assembly import assemble
from server.core.errors import ErrorKind, ServeError
from server.core.service import InferenceService
from server.core.tokenizer import TokenizerPool
from server.settings import Settings
from tests.fakes import LABELS, FakeRuntime, FakeRuntimes, run_json, write_model

Build = Callable[..., Awaitable[tuple[InferenceService, dict[str, FakeRuntime]]]]


@pytest.fixture
def build(tokenizer_file: Path, tmp_path: Path) -> Build:
    """`await build(settings, name=task, ...) -> (service, {name: runtime})`, loaded through the real
    loader and registry from a repository of fake models; each test drains its service."""

    async def make(settings: Settings | None = None, **models: str) -> tuple[InferenceService, dict[str, FakeRuntime]]:
        settings = settings or Settings(max_queue_delay_ms=1)
        repository = tmp_path / "repository"
        for name, task in (models or {"clf": "classify"}).items():
            write_model(repository, tokenizer_file, name, task)
        factory = FakeRuntimes()
        service = assemble(settings.model_copy(update={"device": "cpu"}), repository, factory).service
        await service.start()
        return service, {name: factory.latest(name) for name in factory.made}

    return make


def expected_classify(n_tokens: int) -> list[dict[str, Any]]:
    logits = np.array([n_tokens, -n_tokens, 0.0])
    scores = np.exp(logits - logits.max())
    scores /= scores.sum()
    order = np.argsort(-scores, kind="stable")
    return [{"label": LABELS[i], "score": float(scores[i])} for i in order]


def sample(service: InferenceService, name: str, **labels: str) -> float | None:
    return service.observer.registry.get_sample_value(name, labels)  # type: ignore[attr-defined]


async def expect(kind: ErrorKind, awaitable: Any) -> ServeError:
    with pytest.raises(ServeError) as caught:
        await awaitable
    assert caught.value.kind is kind, caught.value
    return caught.value


def run(service: InferenceService, task: str | None, model: Any, inputs: Any, parameters: Any = None,
        deadline: float | None = None) -> Awaitable[Any]:  # fmt: skip
    return run_json(service, task, model, inputs, parameters, deadline)


# ------------------------------------------------------------------ requests


async def test_run_returns_pipeline_shaped_results_in_input_order(build: Build) -> None:
    service, runtimes = await build()
    texts = ["a", "a b c d e", "a b", "a b c d e f g h i j"]
    result = await run(service, "classify", "clf", texts, {"top_k": None})
    # [CLS] + one token per letter + [SEP]: each item got its own row back, whatever the batch order.
    assert result.pipeline_json() == [expected_classify(len(t.split()) + 2) for t in texts]
    assert (result.model, result.version, result.task.task) == ("clf", "1", "classify")
    single = await run(service, "classify", None, "a b", None)
    assert single.pipeline_json() == expected_classify(4)[:1]  # one input, top_k 1 by default
    timings = single.timings
    assert timings.tokenization_s >= 0 and timings.queue_s >= 0 and timings.inference_s >= 0
    assert timings.total_s >= timings.tokenization_s
    assert sum(shape[0] for shape in runtimes["clf"].calls) == 5  # five rows, however batched
    await service.drain(1)


async def test_windows_fan_out_and_come_back_to_their_own_request(build: Build, tokenizer_file: Path) -> None:
    """Long texts become several windows batched together; every token keeps its own score."""
    service, runtimes = await build(disc="discriminate")
    texts = [" ".join(f"word{i} number {i * 7}" for i in range(n)) for n in (5, 30, 60)]
    result = await run(service, "discriminate", "disc", texts)
    pool = TokenizerPool.from_file(tokenizer_file)
    assert sum(shape[0] for shape in runtimes["disc"].calls) > len(texts)  # windows, not one row per text
    for text, value in zip(texts, result.pipeline_json(), strict=True):
        assert value["tokens"][-1]["end"] == len(text)
        for token in value["tokens"]:
            token_id = pool.get().token_to_id(token["token"])
            assert token["score"] == pytest.approx(1 / (1 + np.exp(-((token_id % 7) - 3))), abs=1e-6)
    await service.drain(1)


async def test_resolve_rules(build: Build) -> None:
    service, _ = await build(clf="classify", clf2="classify", disc="discriminate")
    resolve = service.catalogue.resolve
    assert resolve("discriminate", None).name == "disc"
    assert resolve("classify", "clf2").name == "clf2"
    assert resolve(None, "disc").name == "disc"  # /models/{name}: the task comes from the model
    message = str(await expect(ErrorKind.BAD_REQUEST, run(service, "classify", None, "x")))
    assert "clf" in message and "clf2" in message
    await expect(ErrorKind.NOT_FOUND, run(service, "classify", "nope", "x"))
    await expect(ErrorKind.NOT_FOUND, run(service, "qa", None, {"question": "a", "context": "b"}))
    await expect(ErrorKind.BAD_REQUEST, run(service, "classify", "disc", "x"))
    await expect(ErrorKind.BAD_REQUEST, run(service, "classify", 3, "x"))  # type: ignore[arg-type]
    await service.drain(1)


async def test_bad_input_fails_before_any_model_run(build: Build) -> None:
    service, runtimes = await build(Settings(max_inputs_per_request=3, max_queue_size=4, max_queue_delay_ms=1))
    await expect(ErrorKind.INVALID_INPUT, run(service, "classify", "clf", []))
    await expect(ErrorKind.BAD_REQUEST, run(service, "classify", "clf", "x", {"top_k": 0}))
    await expect(ErrorKind.TOO_LARGE, run(service, "classify", "clf", ["x"] * 4))  # > max_inputs_per_request
    await expect(ErrorKind.INVALID_INPUT, run(service, "classify", "clf", "word " * 40))  # > max_seq_len 32
    assert runtimes["clf"].calls == []
    await service.drain(1)


async def test_request_larger_than_the_queue_is_too_large(build: Build) -> None:
    service, runtimes = await build(Settings(max_queue_size=2, max_queue_delay_ms=1), disc="discriminate")
    long_text = " ".join(["token"] * 100)  # four windows of a 32-token model
    await expect(ErrorKind.TOO_LARGE, run(service, "discriminate", "disc", long_text))
    assert runtimes["disc"].calls == []
    await service.drain(1)


async def test_deadline_in_the_past_is_deadline_exceeded(build: Build) -> None:
    service, runtimes = await build()
    await expect(ErrorKind.DEADLINE_EXCEEDED, run(service, "classify", "clf", "x", None, time.monotonic() - 1))
    assert runtimes["clf"].calls == []
    assert sample(service, "electra_dropped_total", model="clf", reason="deadline") == 1
    await service.drain(1)


async def test_a_failing_run_fails_only_its_request(build: Build) -> None:
    service, runtimes = await build()
    runtimes["clf"].fail = True
    message = str(await expect(ErrorKind.INTERNAL, run(service, "classify", "clf", "x")))
    # No internals reach the client, only the request id that finds the log line.
    assert "injected failure" not in message and "request id" in message
    runtimes["clf"].fail = False
    assert (await run(service, "classify", "clf", "x")).pipeline_json() == expected_classify(3)[:1]
    assert service.ready
    assert sample(service, "electra_requests_total", model="clf", task="classify", protocol="rest", code="500") == 1
    await service.drain(1)


async def test_cancelled_request_drops_its_queued_rows(build: Build) -> None:
    service, runtimes = await build(Settings(max_queue_delay_ms=5000))  # rows wait for company
    task = asyncio.ensure_future(run(service, "classify", "clf", ["a", "b", "c"]))
    batcher = service.catalogue.resolve(None, "clf").batcher
    while batcher.queue_depth < 3:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert batcher.queue_depth == 0
    assert sample(service, "electra_dropped_total", model="clf", reason="cancelled") == 1  # one request
    assert runtimes["clf"].calls == []
    await asyncio.wait_for(service.drain(5), 2)  # nothing left in flight: drains at once


async def test_not_loaded_and_draining_are_unavailable(build: Build) -> None:
    service, _ = await build()
    service.models.started = False  # as before start-up ends
    assert not service.ready and not service.model_ready("clf")
    error = await expect(ErrorKind.UNAVAILABLE, run(service, "classify", "clf", "x"))
    assert error.retry_after_s is not None and error.retry_after_s > 0
    service.models.started = True
    assert service.ready and service.model_ready("clf") and not service.model_ready("nope")
    await service.drain(1)
    assert not service.ready and not service.model_ready("clf")
    error = await expect(ErrorKind.UNAVAILABLE, run(service, "classify", "clf", "x"))
    assert "shutting down" in str(error)


async def test_drain_answers_accepted_requests_first(build: Build) -> None:
    service, runtimes = await build()
    assert sample(service, "electra_model_ready", model="clf") == 1
    gate = runtimes["clf"].gate = threading.Event()
    accepted = [asyncio.ensure_future(run(service, "classify", "clf", f"text {i}")) for i in range(3)]
    while not runtimes["clf"].calls:  # the first batch is running (and blocked)
        await asyncio.sleep(0.001)
    draining = asyncio.ensure_future(service.drain(10))
    await asyncio.sleep(0.05)
    assert not service.ready and not draining.done()
    assert sample(service, "electra_model_ready", model="clf") == 0
    await expect(ErrorKind.UNAVAILABLE, run(service, "classify", "clf", "late"))
    gate.set()
    results = await asyncio.gather(*accepted)
    assert [r.pipeline_json() for r in results] == [expected_classify(4)[:1]] * 3
    await asyncio.wait_for(draining, 5)


async def test_ready_follows_the_batcher_health(build: Build) -> None:
    service, _ = await build()
    await run(service, "classify", "clf", "x")  # starts the batching loop
    assert service.ready
    batcher = service.catalogue.resolve(None, "clf").batcher

    def broken(lengths: Any, limits: Any) -> Any:
        raise RuntimeError("a bug in the batching loop")

    # The loop dies on a bug: it is restarted (what was queued gets 503, clients retry), a few
    # times; past that the model is dead, readiness and liveness say so, requests get 503.
    healthy_selector = batcher.selector
    for attempt in range(4):
        batcher.selector = broken  # the selection policy is replaceable: a bug in it breaks the loop
        await expect(ErrorKind.UNAVAILABLE, run(service, "classify", "clf", "x"))
        batcher.selector = healthy_selector
        await asyncio.sleep(0)
        if attempt < 3:
            assert batcher.alive and service.ready and service.live
            assert (await run(service, "classify", "clf", "x")).pipeline_json() == expected_classify(3)[:1]
    assert not batcher.alive
    assert not service.ready and not service.model_ready("clf") and not service.live
    assert sample(service, "electra_batcher_restarts_total", model="clf") == 3
    await expect(ErrorKind.UNAVAILABLE, run(service, "classify", "clf", "x"))
    await service.drain(1)


async def test_describe(build: Build) -> None:
    service, _ = await build()
    described = service.catalogue.resolve(None, "clf").describe()
    assert described["name"] == "clf" and described["task"] == "classify" and described["version"] == "1"
    assert described["labels"] == ["NEG", "POS", "MID"]
    assert (described["precision"], described["device"], described["max_seq_len"]) == ("fp32", "cpu", 32)
    assert described["parity"]["max_abs_error"] == 1e-6 and described["parity"]["top1_agreement"] == 1.0
    await service.drain(1)


# ------------------------------------------------------------------ a real model through the loader


async def test_load_a_real_repository(export_model: Callable[..., Path]) -> None:
    model_dir = export_model("classify", labels=["contradiction", "entailment", "neutral"], seed=31)
    settings = Settings(models=model_dir.name, device="cpu", max_queue_delay_ms=1, max_batch_size=4,
                        max_batch_tokens=256)  # fmt: skip
    service = assemble(settings, model_dir.parent).service
    assert not service.ready
    await service.start(settings.start_models())
    try:
        assert service.ready and [v.name for v in service.catalogue.serving()] == [model_dir.name]
        assert sample(service, "electra_model_ready", model=model_dir.name) == 1
        described = service.catalogue.resolve(None, model_dir.name).describe()
        assert described["labels"] == ["contradiction", "entailment", "neutral"] and described["device"] == "cpu"
        assert "/" not in described["source"]["model"]  # paths stay in the logs
        result = await run(service, "classify", None, ["A man eats.", "Nobody eats."], {"top_k": None})
        for scores in result.pipeline_json():
            assert sorted(e["label"] for e in scores) == ["contradiction", "entailment", "neutral"]
            assert sum(e["score"] for e in scores) == pytest.approx(1.0, abs=1e-6)
    finally:
        await service.drain(5)
    assert not service.ready


async def test_idle_cpu_server_gives_freed_heap_back(
    export_model: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the loader set the glibc thresholds, a second without requests triggers malloc_trim once
    (off the event loop); requests arriving meanwhile postpone it."""
    from server.core import service as service_module

    trimmed: list[str] = []
    monkeypatch.setattr(service_module, "IDLE_TRIM_S", 1.0)
    monkeypatch.setattr(service_module, "release_free_heap", lambda: trimmed.append(threading.current_thread().name))
    model_dir = export_model("classify", labels=["contradiction", "entailment", "neutral"], seed=31)
    settings = Settings(models=model_dir.name, device="cpu")
    service = assemble(settings, model_dir.parent).service
    await service.start(settings.start_models())
    try:
        assert service.models.heap_tuned
        for _ in range(3):
            await run(service, "classify", None, "A man eats.", None)
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


async def test_a_drain_during_loading_stops_it_at_the_next_model(tokenizer_file: Path, tmp_path: Path) -> None:
    """SIGTERM while a repository loads: the model being loaded finishes, no further one starts,
    nothing is reported ready, and start() returns without an error."""
    for name in ("first", "second", "third"):
        write_model(tmp_path, tokenizer_file, name, "classify")
    service_ref: list[InferenceService] = []
    factory = FakeRuntimes()

    def runtime_then_sigterm(path: Path, *args: Any) -> Any:
        service_ref[0].draining = True  # what drain() sets first
        service_ref[0].models.stopping = True
        return factory(path, *args)

    service = assemble(Settings(device="cpu"), tmp_path, runtime_then_sigterm).service
    service_ref.append(service)
    await service.start()
    assert list(factory.made) == ["first"]
    assert not service.loaded and not service.ready and service.load_error is None
    await service.drain(1)


async def test_load_fails_clearly_on_a_missing_model(tokenizer_file: Path, tmp_path: Path) -> None:
    write_model(tmp_path, tokenizer_file, "present", "classify")
    service = assemble(Settings(device="cpu"), tmp_path, FakeRuntimes()).service
    error = await expect(ErrorKind.NOT_FOUND, service.start(["absent-model"]))
    assert "absent-model" in str(error) and service.load_error and not service.ready
    assert "/" not in service.not_ready_reason()  # no paths in what clients see
    await service.drain(1)


def test_cpu_batch_defaults_apply_only_to_limits_the_user_left_unset() -> None:
    from server.core.config import CPU_BATCH_DEFAULTS

    def limits(settings: Settings, device: str) -> tuple[int, int, int | None]:
        policy = settings.core_config().batch_policy(device)
        return policy.max_batch_size, policy.max_batch_tokens, policy.max_batch_attention

    cpu = CPU_BATCH_DEFAULTS
    tokens, cells = cpu["max_batch_tokens"], cpu["max_batch_attention"]
    assert limits(Settings(), "cpu") == (cpu["max_batch_size"], tokens, cells)
    assert limits(Settings(), "cuda") == (32, 8192, None)
    assert limits(Settings(max_batch_size=24), "cpu") == (24, tokens, cells)
    assert limits(Settings(max_batch_size=24, max_batch_tokens=4096), "cpu")[:2] == (24, 4096)
    # 0 means no limit, on CPU too once the user says so; on CUDA a set limit applies.
    assert limits(Settings(max_batch_attention=0), "cpu")[2] is None
    assert limits(Settings(max_batch_attention=50_000), "cuda")[2] == 50_000


def test_padding_limit_is_the_devices_default_unless_set() -> None:
    from server.settings import load_settings

    def padding(settings: Settings, device: str) -> float | None:
        return settings.core_config().batch_policy(device).max_padding_ratio

    assert padding(Settings(), "cpu") == 0.1
    assert padding(Settings(), "cuda") is None
    assert padding(load_settings(["--max-padding-ratio", "0.25"]), "cpu") == 0.25
    assert padding(load_settings(["--max-padding-ratio", "0"]), "cuda") == 0.0
    assert padding(load_settings(["--max-padding-ratio", "1"]), "cpu") is None  # 1: no limit
    with pytest.raises(pydantic.ValidationError):
        load_settings(["--max-padding-ratio", "1.5"])


def test_short_requests_are_tokenized_inline_and_long_ones_on_the_threads() -> None:
    from server.core.service import text_chars

    assert text_chars(["abc", "de"], 1024) == 5
    assert text_chars([("question?", "a context"), ("q", None)], 1024) == 19
    assert text_chars(["x" * 600, "y" * 600, "z" * 600], 1024) == 1200  # stops once past the limit
