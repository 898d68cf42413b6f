"""Every server setting, once: a pydantic-settings class whose fields are both `--flags` and
`ELECTRA_*` environment variables (a flag given on the command line wins over the environment).

The core never reads these: `core_config()` turns them into `server.core.config.CoreConfig`, whose
defaults are the flags' defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.api.http.exchange import HttpLimits
from server.core.config import DEFAULT_CONFIG, GPU_BATCH_DEFAULTS, BatchPolicy, CoreConfig
from server.core.repository import VersionPolicy

_B = GPU_BATCH_DEFAULTS
_C = DEFAULT_CONFIG
# Flags that can be given more than once; their environment twin is a comma list.
REPEATABLE = ("load_model",)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ELECTRA_", extra="ignore", protected_namespaces=())

    model_repository: Path | None = Field(
        None, description="model repository directory (default: the demo repository, generated offline on first use)"
    )
    models: str | None = Field(
        None, description="comma list of model names to load at start (default: all in the repository)"
    )
    host: str = Field("127.0.0.1", description="address to listen on (REST and gRPC)")
    http_port: int = Field(8000, ge=0, le=65535, description="REST port (0: any free port)")
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC port (0: any free port, -1 is not allowed)")
    device: Literal["auto", "cpu", "cuda"] = Field(_C.device, description="auto: CUDA when onnxruntime-gpu sees a GPU")
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        _C.precision, description="auto: fp16 on CUDA, fp32 on CPU"
    )
    tensorrt: bool = Field(_C.tensorrt, description="opt in to onnxruntime's TensorRT execution provider on CUDA")

    # -- front end --
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="API processes sharing the HTTP and gRPC ports (SO_REUSEPORT), tokenizing and decoding in "
        "parallel, all feeding one model owner that batches across them; 1: one process does everything",
    )
    runtime: Literal["onnx", "simulated"] = Field(
        "onnx",
        description="simulated: a benchmarking aid standing in for a GPU (a cost model's delay, correctly shaped "
        "but meaningless outputs), never for serving",
    )
    sim_batch_ms: float = Field(1.5, ge=0, description="--runtime simulated: milliseconds a model run costs at least")
    sim_token_us: float = Field(1.0, ge=0, description="--runtime simulated: microseconds per padded token")

    # -- model lifecycle (Triton's names) --
    model_control_mode: Literal["none", "poll", "explicit"] = Field(
        "none",
        description="none: load at start, never change; poll: also follow the repository (new, changed and "
        "removed models and versions) every --repository-poll-secs; explicit: load and unload through "
        "the repository API only (/v2/repository/models/NAME/load, RepositoryModelLoad)",
    )
    repository_poll_secs: float = Field(15.0, gt=0, description="poll mode: seconds between repository scans")
    load_model: str | None = Field(
        None,
        description="explicit mode: a model to load at start (repeat the flag, or a comma list; '*': every model); "
        "nothing else loads at start",
    )
    version_policy: str = Field(
        "latest:1",
        description="versions served of a model with version directories and no config.json policy: "
        "latest[:N] | all | specific:V[,V...]",
    )

    # -- security --
    api_keys_file: Path | None = Field(
        None,
        description="API keys, one a line: every request then needs 'Authorization: Bearer KEY' (gRPC: "
        "'authorization' metadata); the file is read again when it changes and on SIGHUP",
    )
    auth_probes: bool = Field(
        False,
        description="with API keys, also require one for /health/*, /v2/health/*, /metrics and gRPC health "
        "(off: probes and scrapes stay open)",
    )
    tls_cert: Path | None = Field(None, description="PEM certificate (chain): TLS on both ports")
    tls_key: Path | None = Field(None, description="PEM private key of --tls-cert")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle: mutual TLS on both ports (a client certificate it signed is required)"
    )
    secrets_poll_secs: float = Field(
        5.0, gt=0, description="how often the API keys and TLS files are checked for changes"
    )
    state_file: Path | None = Field(
        None,
        description="once listening, write the address, TLS files and probe settings here (JSON) for "
        "electra-serve-probe, a HEALTHCHECK that follows the flags; removed at exit",
    )
    log_format: Literal["text", "json"] = Field("text", description="log lines for people (text) or collectors (json)")

    max_batch_size: int = Field(_B.max_batch_size, ge=1, description="most rows in one model run (unset on CPU: 8)")
    max_batch_tokens: int = Field(
        _B.max_batch_tokens,
        ge=1,
        description="most padded tokens (rows x longest row) in one model run (unset on CPU: 2048)",
    )
    max_batch_attention: int = Field(
        0,
        ge=0,
        description="most attention cells (rows x longest row squared) in one model run; 0: no limit "
        "(unset on CPU: 160000, one 384-token window or 8 rows of 128)",
    )
    max_queue_delay_ms: float = Field(
        _B.max_queue_delay_ms, ge=0, description="longest wait for more rows before a batch is cut"
    )
    max_padding_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="a batch stops growing before its padded share of tokens passes this (1: no limit; "
        "unset: 0.1 on CPU, none on CUDA)",
    )
    max_queue_size: int = Field(
        _B.max_queue_size, ge=1, description="most queued rows per model; beyond it requests get 429"
    )
    max_request_rows: int = Field(
        0,
        ge=0,
        description="most rows one request may have queued (413 beyond); 0: half of --max-queue-size",
    )
    max_inflight_batches: int = Field(0, ge=0, description="batches running at once per model (0: 1 on CUDA, 2 on CPU)")
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime threads per session (0: cores / sessions)")
    tokenizer_threads: int = Field(
        _C.tokenizer_threads, ge=1, description="threads that tokenize requests off the event loop"
    )
    inline_tokenize_chars: int = Field(
        _C.inline_tokenize_chars,
        ge=0,
        description="requests with at most this many characters of text are tokenized on the event loop "
        "(tens of microseconds, less than the hand-off to a tokenizer thread); 0: always on the threads",
    )

    max_request_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="largest request body or gRPC message received (413 / RESOURCE_EXHAUSTED beyond)",
    )
    max_body_buffer_mb: int = Field(
        _C.max_body_buffer_bytes >> 20,
        ge=1,
        description="MiB of request bodies one API process holds at a time, from arrival to answer, each counted "
        "six times (its parsed copies); past it a new body over 64 KiB is refused (429 / RESOURCE_EXHAUSTED "
        "with Retry-After; 413 for a body the whole buffer could never hold)",
    )
    max_inputs_per_request: int = Field(
        _C.max_inputs_per_request, ge=1, description="most inputs (texts, pairs, questions) in one request (413 beyond)"
    )
    max_windows_per_request: int = Field(
        _C.max_windows_per_request,
        ge=1,
        description="most model windows one request may need: long texts and QA contexts are split into "
        "stride windows, and their number is counted before any is built (413 beyond)",
    )
    request_timeout_s: float = Field(
        _C.request_timeout_s,
        gt=0,
        description="deadline of a request that sets none, and the longest one a request may set",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="longest time to receive a request body (408 beyond): a slow client must not hold a task",
    )
    http_max_connections: int = Field(
        2048, ge=1, description="open HTTP connections and requests at most; beyond, new ones get 503"
    )
    grpc_max_concurrent_rpcs: int = Field(
        2048, ge=1, description="gRPC calls at once at most; beyond, new ones get RESOURCE_EXHAUSTED"
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM, the longest the whole shutdown takes (accepted work, then the servers)"
    )
    grpc_max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest gRPC message sent")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        return self

    @field_validator("version_policy")
    @classmethod
    def _policy(cls, value: str) -> str:
        VersionPolicy.parse(value)
        return value

    def model_names(self) -> list[str] | None:
        if not self.models:
            return None
        return [name.strip() for name in self.models.split(",") if name.strip()]

    def start_models(self) -> list[str] | None:
        """What loads at start: None for every model of the repository."""
        if self.model_control_mode != "explicit":
            return self.model_names()
        names = [n.strip() for n in (self.load_model or "").split(",") if n.strip()]
        return None if "*" in names else names

    def inflight_batches(self, device: str) -> int:
        return self.core_config().batch_policy("cpu" if device == "cpu" else "cuda").max_inflight_batches

    def core_config(self) -> CoreConfig:
        given = self.model_fields_set
        batch = BatchPolicy(
            max_batch_size=self.max_batch_size,
            max_batch_tokens=self.max_batch_tokens,
            max_batch_attention=self.max_batch_attention or None,
            max_queue_delay_ms=self.max_queue_delay_ms,
            max_padding_ratio=None
            if self.max_padding_ratio is None or self.max_padding_ratio >= 1
            else self.max_padding_ratio,
            max_queue_size=self.max_queue_size,
            max_request_rows=self.max_request_rows or None,
            max_inflight_batches=self.max_inflight_batches or _B.max_inflight_batches,
        )
        overrides: set[str] = {
            name
            for name in ("max_batch_size", "max_batch_tokens", "max_batch_attention", "max_padding_ratio")
            if name in given and getattr(self, name) is not None
        }
        if self.max_inflight_batches:
            overrides.add("max_inflight_batches")
        return CoreConfig(
            device=self.device,
            precision=self.precision,
            tensorrt=self.tensorrt,
            batch=batch,
            batch_overrides=frozenset(overrides),
            intra_op_threads=self.intra_op_threads,
            tokenizer_threads=self.tokenizer_threads,
            inline_tokenize_chars=self.inline_tokenize_chars,
            max_inputs_per_request=self.max_inputs_per_request,
            max_windows_per_request=self.max_windows_per_request,
            request_timeout_s=self.request_timeout_s,
            max_body_buffer_bytes=self.max_body_buffer_mb << 20,
        )

    def http_limits(self) -> HttpLimits:
        return HttpLimits(max_request_bytes=self.max_request_bytes, body_timeout_s=self.body_timeout_s)

    def policy(self) -> VersionPolicy:
        return VersionPolicy.parse(self.version_policy)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="electra-serve",
        description="Serve ELECTRA models over REST and gRPC. Every flag also reads ELECTRA_<FLAG_IN_CAPS>.",
    )
    for name, field in Settings.model_fields.items():
        env = f"ELECTRA_{name.upper()}"
        help_text = f"{field.description} [env {env}; default {field.default}]"
        if field.annotation is bool:
            parser.add_argument(
                _flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif name in REPEATABLE:
            parser.add_argument(_flag(name), dest=name, action="append", default=None, help=help_text)
        else:
            parser.add_argument(_flag(name), dest=name, default=None, help=help_text)
    return parser


def load_settings(argv: list[str] | None = None) -> Settings:
    """Flags override the environment, which overrides the defaults; pydantic validates all three."""
    args = build_parser().parse_args(argv)
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    for name in REPEATABLE:
        if name in given:
            given[name] = ",".join(given[name])
    return Settings(**given)
