"""Service settings: every knob of the HTTP service, read from the environment.

Each field reads the environment variable ``CAPTIONER_<FIELD NAME IN CAPITALS>``
(``CAPTIONER_MAX_BATCH_SIZE=32``, ``CAPTIONER_API_KEY=...``); flags of ``captioner serve``
override the environment. Lists (``CAPTIONER_CORS_ORIGINS``) are comma-separated.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from captioner.images import DEFAULT_MAX_PIXELS
from captioner.options import BEAM_SIZE, MAX_LENGTH

#: uvicorn's log levels, quietest first.
DECODE_IN = ("processes", "threads")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class Settings(BaseSettings):
    """Configuration of one service process (see docs/service.md for the whole table)."""

    # hide_input_in_errors: a refused API key must not be echoed into logs.
    model_config = SettingsConfigDict(
        env_prefix="CAPTIONER_", extra="ignore", validate_default=True, hide_input_in_errors=True
    )

    # where to listen
    host: str = Field("127.0.0.1", description="interface to bind; 0.0.0.0 to accept connections from other machines")
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one")

    # the model
    checkpoint: Path | None = Field(None, description="checkpoint folder; empty means the shipped default weights")
    device: str | None = Field(
        None,
        description="cpu (the torch-free ONNX Runtime path), or cuda / cuda:N (the PyTorch path: needs "
        "captioner[train]); empty means cpu",
    )
    threads: int | None = Field(None, ge=1, description="threads running the encoder; empty means every CPU allowed")
    torch_threads: int | None = Field(None, ge=1, description="deprecated: the old name of threads")
    precision: str | None = Field(
        None,
        description="what the ONNX Runtime encoder computes in: int8 or fp32; empty means the checkpoint's choice",
    )

    # dynamic batching
    max_batch_size: int = Field(16, ge=1, le=1024, description="most images run through the model at once")
    max_wait_ms: float = Field(
        5.0,
        ge=0,
        le=10_000,
        description="how long a batch that is not full may wait for more "
        "images while the model is busy (an idle model starts at once)",
    )
    lanes: int = Field(
        2,
        ge=1,
        le=16,
        description="batches run at once: 2 lets one batch's search overlap the next batch's encoder; "
        "a batch beside another runs on threads/lanes encoder threads, alone on all of them",
    )
    queue_size: int = Field(128, ge=1, description="most images accepted and not yet captioned; beyond it 503")
    decode_workers: int = Field(2, ge=1, le=64, description="threads decoding and preprocessing uploads")
    decode_in: str = Field(
        "processes",
        description="processes: each decode runs in a worker process that is killed when it outlives its "
        "request (the decode budget); threads: in the decode threads, ~0.4 ms less per image, for uploads "
        "from a trusted source only (a slow decode then keeps its thread)",
    )

    # limits
    max_files: int = Field(16, ge=1, description="most images in one request")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest request body, enforced while reading")
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, description="largest image (width x height), checked before decoding"
    )
    body_timeout_s: float = Field(60.0, gt=0, description="time limit for receiving a request body; then 408")
    max_buffered_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="most request-body bytes held in memory across all requests; "
        "an upload that does not fit gets 503 + Retry-After before its body is read",
    )
    max_request_pixels: int = Field(
        200_000_000,
        ge=1,
        description="most pixels in one request's images together, read from their headers before any "
        "is decoded; more is refused with 413 too_many_pixels",
    )
    max_client_pixels: int = Field(
        400_000_000,
        ge=1,
        description="most pixels of one client address's requests being decoded or captioned at once; "
        "more gets 429 client_busy + Retry-After (behind a proxy every client has the proxy's address)",
    )
    max_client_buffered_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1024,
        description="most request-body bytes one client address may hold of max_buffered_bytes; "
        "more gets 429 client_busy + Retry-After before the body is read",
    )
    min_upload_bytes_per_s: int = Field(
        16 * 1024,
        ge=0,
        le=1024 * 1024 * 1024,
        description="slowest accepted upload: a body that falls behind this rate (after a grace of "
        "header_timeout_s) is cut with 408 body_too_slow; 0 turns the check off",
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, le=16 * 1024 * 1024, description="largest request line + headers; then 431"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="time limit for receiving a request line and headers; then 408 and close"
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="most open connections; one more is answered 503 + Retry-After and closed (a few more "
        "are kept for /healthz and /readyz)",
    )
    write_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="a response the client does not read for this long (the send buffer stays full) "
        "closes its connection",
    )
    request_timeout_s: float = Field(30.0, gt=0, description="time limit for one request, queueing included; then 504")
    max_beam_size: int = Field(5, ge=1, le=int(BEAM_SIZE.high), description="largest beam size a request may ask for")
    max_length_limit: int = Field(
        50, ge=1, le=int(MAX_LENGTH.high), description="largest max_length (words) a request may ask for"
    )
    default_beam_size: int = Field(
        1, ge=1, le=int(BEAM_SIZE.high), description="beam size when the request gives none (1 = greedy)"
    )

    # security
    api_key: SecretStr | None = Field(
        None,
        description="when set, /v1/* requires 'Authorization: Bearer <key>'; printable ASCII, no "
        "whitespace at either end (an empty value means no key)",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed to call the API from a browser; empty = CORS off"
    )

    # lifecycle
    drain_seconds: float = Field(
        0.0,
        ge=0,
        description="after SIGTERM: keep serving this long while /readyz says "
        "503 (so a load balancer stops sending), then finish in-flight requests and exit",
    )
    log_level: str = Field("info", description="uvicorn log level: " + ", ".join(LOG_LEVELS))

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _usable_key(cls, value: object) -> object:
        """An empty key means none; a key no client could send is refused, never ignored."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(text, str):
            return value
        if text == "":
            return None
        if not text.strip():
            raise ValueError("the API key is only whitespace, which would turn authentication off; set a real key")
        if text != text.strip():
            raise ValueError("the API key starts or ends with whitespace, which clients cannot send; remove it")
        if not all(0x20 <= ord(ch) <= 0x7E for ch in text):
            raise ValueError(
                "the API key has a character outside printable ASCII (a control or non-ASCII character), "
                "which an HTTP header cannot carry reliably; use letters, digits and punctuation"
            )
        return value

    @field_validator("checkpoint", "device", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        name = str(value).strip().lower()
        if name not in ("int8", "fp32"):
            raise ValueError("precision must be one of int8, fp32")
        return name

    @field_validator("decode_in")
    @classmethod
    def _decode_in(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in DECODE_IN:
            raise ValueError(f"decode_in must be one of {', '.join(DECODE_IN)}")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        value = value.lower()
        if value not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.queue_size < self.max_files:
            raise ValueError(
                f"queue_size ({self.queue_size}) must be at least max_files ({self.max_files}), "
                "or a full-size request could never be accepted"
            )
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_buffered_bytes ({self.max_buffered_bytes}) must be at least max_body_bytes "
                f"({self.max_body_bytes}), or a full-size body could never be accepted"
            )
        if self.max_client_buffered_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_client_buffered_bytes ({self.max_client_buffered_bytes}) must be at least max_body_bytes "
                f"({self.max_body_bytes}), or a full-size body could never be accepted"
            )
        if self.max_request_pixels < self.max_pixels or self.max_client_pixels < self.max_request_pixels:
            raise ValueError(
                f"max_pixels ({self.max_pixels}) <= max_request_pixels ({self.max_request_pixels}) <= "
                f"max_client_pixels ({self.max_client_pixels}) must hold, or a request within one limit "
                "could never pass the next"
            )
        if self.default_beam_size > self.max_beam_size:
            raise ValueError(
                f"default_beam_size ({self.default_beam_size}) exceeds max_beam_size ({self.max_beam_size})"
            )
        return self

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0


def settings_from_environment() -> Settings:
    """Settings from the ``CAPTIONER_*`` variables alone (plain ``uvicorn --factory``). Invalid
    ones stop the process before anything is loaded: one line on stderr, exit status 2."""
    try:
        return Settings()
    except ValidationError as e:
        problems = "; ".join(
            (f"CAPTIONER_{str(err['loc'][0]).upper()}: " if err.get("loc") else "")
            + str(err.get("msg", "invalid")).removeprefix("Value error, ")
            for err in e.errors()
        )
        print(f"captioner: invalid service settings: {problems}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
