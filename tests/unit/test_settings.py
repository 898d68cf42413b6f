"""Settings: every flag has an ELECTRA_* twin; flags beat the environment, which beats the
defaults; invalid values end `electra-serve` with exit code 2 and a message naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.__main__ import main
from server.settings import Settings, build_parser, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ELECTRA_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_contracts() -> None:
    settings = load_settings([])
    assert settings.model_repository is None  # the demo repository
    assert settings.model_names() is None  # every model of the repository
    assert (settings.host, settings.http_port, settings.grpc_port) == ("127.0.0.1", 8000, 8001)
    assert (settings.device, settings.precision) == ("auto", "auto")
    assert settings.tensorrt is False
    assert settings.max_batch_size >= 1 and settings.max_queue_size >= 1 and settings.max_batch_tokens >= 1
    assert settings.drain_timeout_s > 0


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELECTRA_HTTP_PORT", "9000")
    monkeypatch.setenv("ELECTRA_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("ELECTRA_MAX_QUEUE_DELAY_MS", "3.5")
    monkeypatch.setenv("ELECTRA_MODELS", "a, b,,c ")
    monkeypatch.setenv("ELECTRA_MODEL_REPOSITORY", "/srv/models")
    monkeypatch.setenv("ELECTRA_TENSORRT", "true")
    monkeypatch.setenv("ELECTRA_DEVICE", "cpu")
    settings = load_settings([])
    assert settings.http_port == 9000 and settings.max_batch_size == 7 and settings.max_queue_delay_ms == 3.5
    assert settings.model_names() == ["a", "b", "c"]
    assert settings.model_repository == Path("/srv/models")
    assert settings.tensorrt is True and settings.device == "cpu"
    assert settings.grpc_port == 8001  # untouched settings keep their defaults


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELECTRA_HTTP_PORT", "9000")
    monkeypatch.setenv("ELECTRA_TENSORRT", "true")
    monkeypatch.setenv("ELECTRA_PRECISION", "fp16")
    settings = load_settings(["--http-port", "9100", "--no-tensorrt", "--max-queue-size", "5"])
    assert settings.http_port == 9100
    assert settings.tensorrt is False
    assert settings.max_queue_size == 5
    assert settings.precision == "fp16"  # not given as a flag: the environment's


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_has_a_flag_and_an_env_twin(name: str) -> None:
    flag = "--" + name.replace("_", "-")
    parser = build_parser()
    actions = {option: action for action in parser._actions for option in action.option_strings}
    assert flag in actions, f"{name} has no {flag}"
    assert f"ELECTRA_{name.upper()}" in (actions[flag].help or ""), "the help names the environment variable"
    assert Settings.model_fields[name].description, f"{name} has no help text"


def test_inflight_batches_default_per_device() -> None:
    assert Settings().inflight_batches("cuda") == 1
    assert Settings().inflight_batches("cpu") == 2
    assert Settings(max_inflight_batches=3).inflight_batches("cpu") == 3


@pytest.mark.parametrize(
    "argv,field",
    [
        (["--http-port", "nope"], "http_port"),
        (["--http-port", "70000"], "http_port"),
        (["--grpc-port", "-1"], "grpc_port"),
        (["--device", "tpu"], "device"),
        (["--precision", "fp8"], "precision"),
        (["--max-batch-size", "0"], "max_batch_size"),
        (["--max-queue-delay-ms", "-1"], "max_queue_delay_ms"),
        (["--log-level", "loud"], "log_level"),
    ],
)
def test_invalid_values_exit_2_naming_the_setting(
    argv: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("electra-serve: error:")
    assert field in error and argv[1] in error


def test_invalid_environment_value_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ELECTRA_MAX_QUEUE_SIZE", "lots")
    assert main([]) == 2
    assert "max_queue_size" in capsys.readouterr().err


def test_missing_model_repository_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model-repository", str(tmp_path / "absent")]) == 2
    assert "absent" in capsys.readouterr().err


def test_command_line_exit_code_and_message() -> None:
    """The real command: `python -m server --http-port nope` exits 2 with one clear error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELECTRA_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "server", "--http-port", "nope"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "electra-serve: error:" in result.stderr and "http_port" in result.stderr and "nope" in result.stderr
    assert "Traceback" not in result.stderr

    unknown = subprocess.run(
        [sys.executable, "-m", "server", "--no-such-flag"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert unknown.returncode == 2 and "--no-such-flag" in unknown.stderr

    help_text = subprocess.run(
        [sys.executable, "-m", "server", "--help"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert help_text.returncode == 0
    assert "ELECTRA_HTTP_PORT" in help_text.stdout and "--max-queue-delay-ms" in help_text.stdout
