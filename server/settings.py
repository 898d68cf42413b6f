"""Every server setting, once: a pydantic-settings class whose fields are both `--flags` and
`ELECTRA_*` environment variables (a flag given on the command line wins over the environment)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ELECTRA_", extra="ignore", protected_namespaces=())

    model_repository: Path | None = Field(
        None, description="model repository directory (default: the demo repository, generated offline on first use)"
    )
    models: str | None = Field(None, description="comma list of model names to load (default: all in the repository)")
    host: str = Field("127.0.0.1", description="address to listen on (REST and gRPC)")
    http_port: int = Field(8000, ge=0, le=65535, description="REST port (0: any free port)")
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC port (0: any free port, -1 is not allowed)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when onnxruntime-gpu sees a GPU")
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field("auto", description="auto: fp16 on CUDA, fp32 on CPU")
    tensorrt: bool = Field(False, description="opt in to onnxruntime's TensorRT execution provider on CUDA")

    max_batch_size: int = Field(32, ge=1, description="most rows in one model run (unset on CPU: 8)")
    max_batch_tokens: int = Field(
        8192, ge=1, description="most padded tokens (rows x longest row) in one model run (unset on CPU: 2048)"
    )
    max_batch_attention: int = Field(
        0,
        ge=0,
        description="most attention cells (rows x longest row squared) in one model run; 0: no limit "
        "(unset on CPU: 160000, one 384-token window or 8 rows of 128)",
    )
    max_queue_delay_ms: float = Field(2.0, ge=0, description="longest wait for more rows before a batch is cut")
    max_padding_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="a batch stops growing before its padded share of tokens passes this (1: no limit; "
        "unset: 0.1 on CPU, none on CUDA)",
    )
    max_queue_size: int = Field(2048, ge=1, description="most queued rows per model; beyond it requests get 429")
    max_inflight_batches: int = Field(0, ge=0, description="batches running at once per model (0: 1 on CUDA, 2 on CPU)")
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime threads per session (0: cores / sessions)")
    tokenizer_threads: int = Field(2, ge=1, description="threads that tokenize requests off the event loop")
    inline_tokenize_chars: int = Field(
        1024,
        ge=0,
        description="requests with at most this many characters of text are tokenized on the event loop "
        "(tens of microseconds, less than the hand-off to a tokenizer thread); 0: always on the threads",
    )

    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest request body (413 beyond)")
    max_inputs_per_request: int = Field(512, ge=1, description="most inputs in one request (413 beyond)")
    request_timeout_s: float = Field(60.0, gt=0, description="default deadline of a request that sets none")
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM, longest wait for accepted work")
    grpc_max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest gRPC message in or out")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")

    def model_names(self) -> list[str] | None:
        if not self.models:
            return None
        return [name.strip() for name in self.models.split(",") if name.strip()]

    def inflight_batches(self, device: str) -> int:
        if self.max_inflight_batches:
            return self.max_inflight_batches
        return 1 if device == "cuda" else 2


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
        else:
            parser.add_argument(_flag(name), dest=name, default=None, help=help_text)
    return parser


def load_settings(argv: list[str] | None = None) -> Settings:
    """Flags override the environment, which overrides the defaults; pydantic validates all three."""
    args = build_parser().parse_args(argv)
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**given)
