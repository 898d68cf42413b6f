"""The model owner's state machine (loading, ready, unloading, unavailable/failed) with the real
loader, batcher and service over fake runtimes: versions, atomic reloads, failed loads that leave
the old version serving, unloads that drain and release, and polling."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path

import pytest

from server.assembly import Assembly, assemble
from server.core.errors import ErrorKind, ModelLoadError, ServeError
from server.settings import Settings
from tests.fakes import FakeRuntimes, run_json, write_model


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return tmp_path / "models"


def build(repository: Path, factory: FakeRuntimes, **settings: object) -> Assembly:
    defaults: dict[str, object] = {"device": "cpu", "max_queue_delay_ms": 1, "drain_timeout_s": 5}
    return assemble(Settings(**(defaults | settings)), repository, factory)


def state(parts: Assembly, name: str) -> dict[str, tuple[str, str]]:
    return {e["version"]: (e["state"], e["reason"]) for e in parts.registry.index() if e["name"] == name}


def ready_gauge(parts: Assembly, name: str) -> float | None:
    return parts.metrics.registry.get_sample_value("electra_model_ready", {"model": name})


async def test_versions_resolve_and_every_answer_names_its_version(repository: Path, tokenizer_file: Path) -> None:
    for version in ("1", "2"):
        write_model(repository, tokenizer_file, "m", "classify", version=version)
    (repository / "m" / "config.json").write_text(json.dumps({"version_policy": {"all": {}}}))
    parts = build(repository, FakeRuntimes())
    await parts.service.start()
    try:
        assert (await run_json(parts.service, "classify", "m", "x")).version == "2"  # the newest by default
        with parts.service.track("rest") as call:
            from server.core.service import TaskRequest

            result = await parts.service.infer(call, TaskRequest("classify", "m", "1", inputs="x"))
        assert result.version == "1" and call.version == "1"
        with pytest.raises(ServeError) as caught:
            parts.registry.table.resolve("classify", "m", "3")
        assert caught.value.kind is ErrorKind.NOT_FOUND and "version '3'" in caught.value.message
        assert state(parts, "m") == {"1": ("READY", ""), "2": ("READY", "")}
    finally:
        await parts.service.drain(2)


async def test_a_reload_is_atomic_and_the_old_version_is_released(repository: Path, tokenizer_file: Path) -> None:
    """Version 2 loads beside 1; until it is ready requests get 1; then 1 drains its accepted
    requests, is stopped and its runtime closed."""
    write_model(repository, tokenizer_file, "m", "classify", version="1")
    factory = FakeRuntimes()
    parts = build(repository, factory, model_control_mode="explicit")
    await parts.service.start(["m"])
    try:
        old = factory.latest("m")
        gate = old.gate = threading.Event()
        held = asyncio.ensure_future(run_json(parts.service, "classify", "m", "held by v1"))
        while not old.calls:
            await asyncio.sleep(0.001)
        write_model(repository, tokenizer_file, "m", "classify", version="2")
        reload = asyncio.ensure_future(parts.registry.load("m"))
        while len(factory.made["m"]) < 2 or parts.registry.table.slots["m"].serving().version != "2":
            await asyncio.sleep(0.001)
        # Traffic moved: new requests are answered by version 2 while version 1 still drains.
        assert (await run_json(parts.service, "classify", "m", "x")).version == "2"
        assert not reload.done() and state(parts, "m")["1"][0] == "UNLOADING"
        gate.set()
        assert (await held).version == "1"  # accepted by v1, answered by v1
        assert await asyncio.wait_for(reload, 5) == ["2"]
        assert old.closed
        assert state(parts, "m") == {"1": ("UNAVAILABLE", "not selected by the version policy"), "2": ("READY", "")}
        assert ready_gauge(parts, "m") == 1
    finally:
        await parts.service.drain(2)


async def test_a_broken_version_leaves_the_old_one_serving(repository: Path, tokenizer_file: Path) -> None:
    write_model(repository, tokenizer_file, "m", "classify", version="1")
    factory = FakeRuntimes()
    parts = build(repository, factory, model_control_mode="explicit")
    await parts.service.start(["m"])
    try:
        broken = write_model(repository, tokenizer_file, "m", "classify", version="2")
        (broken / "manifest.json").write_text('{"name": "m", "task": "classify"}')  # no variants: unreadable
        with pytest.raises(ModelLoadError, match=r"version 2: .*manifest.*\(versions 1 still serve\)"):
            await parts.registry.load("m")
        index = state(parts, "m")
        assert index["1"] == ("READY", "") and index["2"][0] == "UNAVAILABLE" and "manifest" in index["2"][1]
        assert (await run_json(parts.service, "classify", "m", "x")).version == "1"
        assert parts.service.ready
    finally:
        await parts.service.drain(2)


async def test_a_model_that_never_loaded_raises_and_says_why(repository: Path, tokenizer_file: Path) -> None:
    write_model(repository, tokenizer_file, "ok", "classify")
    bad = write_model(repository, tokenizer_file, "bad", "classify")
    (bad / "tokenizer.json").write_text("not a tokenizer")
    parts = build(repository, FakeRuntimes(), model_control_mode="explicit")
    await parts.service.start(["ok"])
    try:
        with pytest.raises(ModelLoadError, match="not a tokenizer"):
            await parts.registry.load("bad")
        assert state(parts, "bad")["1"][0] == "UNAVAILABLE"
        assert parts.service.ready  # a model that failed to load does not make the server unready
        with pytest.raises(ServeError) as caught:
            parts.registry.table.resolve(None, "bad")
        assert caught.value.kind is ErrorKind.NOT_FOUND
    finally:
        await parts.service.drain(2)


async def test_unload_drains_then_releases_everything(repository: Path, tokenizer_file: Path) -> None:
    write_model(repository, tokenizer_file, "m", "classify")
    write_model(repository, tokenizer_file, "other", "classify")
    factory = FakeRuntimes()
    parts = build(repository, factory, model_control_mode="explicit")
    await parts.service.start(["m", "other"])
    try:
        runtime = factory.latest("m")
        gate = runtime.gate = threading.Event()
        held = asyncio.ensure_future(run_json(parts.service, "classify", "m", "accepted"))
        while not runtime.calls:
            await asyncio.sleep(0.001)
        unload = asyncio.ensure_future(parts.registry.unload("m"))
        await asyncio.sleep(0.02)
        with pytest.raises(ServeError) as caught:
            await run_json(parts.service, "classify", "m", "late")
        assert caught.value.kind is ErrorKind.NOT_FOUND  # new requests: at once
        assert not unload.done()
        gate.set()
        assert (await held).version == "1"  # the accepted one: answered
        await asyncio.wait_for(unload, 5)
        assert runtime.closed and not parts.registry.table.slots["m"].loaded
        assert state(parts, "m") == {"1": ("UNAVAILABLE", "unloaded")}
        # Its series are gone from /metrics; the other model's stay.
        assert ready_gauge(parts, "m") is None and ready_gauge(parts, "other") == 1
        assert parts.service.ready  # the other model still serves
        await parts.registry.load("m")  # and it can come back
        assert (await run_json(parts.service, "classify", "m", "again")).version == "1"
    finally:
        await parts.service.drain(2)


async def test_polling_follows_the_repository(repository: Path, tokenizer_file: Path) -> None:
    write_model(repository, tokenizer_file, "m", "classify", version="1")
    factory = FakeRuntimes()
    parts = build(repository, factory, model_control_mode="poll")
    await parts.service.start()
    try:
        await parts.registry.poll()  # nothing changed: nothing reloads
        assert len(factory.made["m"]) == 1
        write_model(repository, tokenizer_file, "m", "classify", version="2")  # an atomic rename
        write_model(repository, tokenizer_file, "new", "tag", labels=["O", "B-X"])
        await parts.registry.poll()
        slot = parts.registry.table.slots["m"]
        assert slot.serving().version == "2" and list(slot.loaded) == ["2"]
        assert (await run_json(parts.service, "tag", "new", "x")).model == "new"
        broken = write_model(repository, tokenizer_file, "m", "classify", version="3")
        (broken / "tokenizer.json").write_text("broken")
        await parts.registry.poll()
        made = len(factory.made["m"])
        await parts.registry.poll()  # the same broken version is not tried again and again
        assert len(factory.made["m"]) == made
        assert parts.registry.table.slots["m"].serving().version == "2"  # still serving
        shutil.rmtree(repository / "new")
        await parts.registry.poll()
        assert not parts.registry.table.slots["new"].loaded
    finally:
        await parts.service.drain(2)
