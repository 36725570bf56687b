"""The shapes of the API's responses, in one place.

Handlers return these models and FastAPI both validates what leaves the server and
documents it in ``/openapi.json``, so the schema cannot drift from the real responses.

Per image, :class:`CaptionItem` is built from the engine's result by
:meth:`CaptionItem.from_result`, which copies every field the two share. A new per-caption
fact (a confidence, an out-of-domain flag, labels, attention) is two typed lines: an
optional field here and the same attribute on :class:`service.captioning.ItemResult`.
Optional fields that are ``None`` are left out of the JSON (``exclude_if``: a failed image
has no ``caption``; a caption has no ``error``); ``file`` is always there (null when
the client gave none), and so is ``filename``, its old name, for a release.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .errors import ErrorBody


def omitted_when_none(value: object) -> bool:
    """``exclude_if`` of the optional fields: a field that does not apply is left out."""
    return value is None


class Label(BaseModel):
    """One ImageNet class the encoder's own classifier sees in the image."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="ImageNet class name, e.g. tabby")
    probability: float = Field(ge=0, le=1, description="the classifier's probability")


class WordAttention(BaseModel):
    """Where an attention model looked for one word of the caption (``explain=true``)."""

    model_config = ConfigDict(extra="forbid")

    word: str = Field(description="the word (the last entry is the end token, <end>)")
    attention: list[list[float]] = Field(
        description="h x w weights over the encoder's grid (row-major, top row first; they sum to 1), rounded"
    )
    peak: list[int] = Field(description="[row, column] of the largest weight")


class Candidate(BaseModel):
    """One of the K best captions of an image (``num_captions=K``)."""

    model_config = ConfigDict(extra="forbid")

    caption: str = Field(description="the caption")
    score: float = Field(description="its log-probability (words and end token) under the model")
    confidence: float | None = Field(
        None, ge=0, le=1, description="its calibrated chance of being right; null without calibration"
    )


class CaptionItem(BaseModel):
    """One image of the request: a caption, or an error for this image alone."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="position of the image in the request, from 0")
    file: str | None = Field(
        None,
        description="the image's name as the client gave it, cleaned (echoed only, never used as a path); null "
        "when none was given. `file` names the image in every output: `captioner caption` files, errors files",
    )
    filename: str | None = Field(
        None,
        description="deprecated: the old name of `file`, the same value; removed in the next release",
        json_schema_extra={"deprecated": True},
    )
    caption: str | None = Field(
        None, exclude_if=omitted_when_none, description="the caption (absent when this image failed)"
    )
    score: float | None = Field(
        None,
        exclude_if=omitted_when_none,
        description="log-probability of the caption (and its end token) under the model",
    )
    confidence: float | None = Field(
        None,
        ge=0,
        le=1,
        exclude_if=omitted_when_none,
        description="calibrated chance that the caption is right (of held-out captions with confidence 0.9, "
        "about 90 % were); absent when the checkpoint has no calibration",
    )
    in_domain: bool | None = Field(
        None,
        exclude_if=omitted_when_none,
        description="false when the image looks unlike the training images (the caption is then a guess; "
        "see labels); absent when the checkpoint has no domain statistics",
    )
    domain_distance: float | None = Field(
        None,
        exclude_if=omitted_when_none,
        description="distance of the image's features to the training images' (Mahalanobis / sqrt(F)); "
        "in domain up to domain_threshold",
    )
    domain_threshold: float | None = Field(
        None,
        exclude_if=omitted_when_none,
        description="the checkpoint's threshold on domain_distance: in domain up to it (as /v1/model "
        "trust.domain.threshold); absent when the checkpoint has no domain statistics",
    )
    candidates: list[Candidate] | None = Field(
        None,
        exclude_if=omitted_when_none,
        description="with num_captions=K > 1: the K best captions (beam search's n-best, distinct, best first; "
        "the first is `caption`), each with its score and confidence; fewer when cutting unsure words made "
        "two the same",
    )
    labels: list[Label] | None = Field(
        None,
        exclude_if=omitted_when_none,
        description="top ImageNet classes of the encoder's own classifier, when asked for with labels=K",
    )
    attention: list[WordAttention] | None = Field(
        None,
        exclude_if=omitted_when_none,
        description="with explain=true: the attention map of each word and of the end token",
    )
    time_ms: float = Field(description="time spent on this image: decoding, queueing and the model")
    batch_size: int | None = Field(
        None, exclude_if=omitted_when_none, description="images in the model batch this one ran in"
    )
    error: str | None = Field(
        None, exclude_if=omitted_when_none, description="error code when this image failed (absent on success)"
    )
    detail: str | None = Field(
        None, exclude_if=omitted_when_none, description="what went wrong with this image (absent on success)"
    )

    @classmethod
    def from_result(cls, result: Any) -> CaptionItem:
        """The response entry of one engine result (any object with these attributes)."""
        values = {name: getattr(result, name) for name in cls.model_fields if hasattr(result, name)}
        name = values.get("file") or values.get("filename")  # one value under both names for a release
        values["file"] = values["filename"] = name
        if values.get("score") is not None:
            values["score"] = round(float(values["score"]), 4)
        values["time_ms"] = round(float(values.get("time_ms") or 0.0), 1)
        if values.get("error") is not None:  # a failed image reports no partial caption
            values.update(
                caption=None, score=None, batch_size=None, confidence=None, in_domain=None, domain_distance=None
            )
            values.update(labels=None, attention=None, domain_threshold=None, candidates=None)
        return cls(**values)


class CaptionResponse(BaseModel):
    """200: at least one image got a caption."""

    model_id: str = Field(description="the loaded model (as in /v1/model)")
    beam_size: int = Field(description="the beam size used (1 = greedy)")
    max_length: int = Field(description="the most words a caption could have")
    length_penalty: float = Field(description="beam search's length penalty used (0: none)")
    no_repeat_ngram_size: int = Field(description="no n-gram of this many words twice in a caption (0: off)")
    num_captions: int = Field(1, description="captions asked for per image (candidates when above 1)")
    succeeded: int = Field(description="images that got a caption")
    failed: int = Field(description="images that failed (their entries carry error and detail)")
    time_ms: float = Field(description="time spent on the whole request")
    results: list[CaptionItem] = Field(description="one entry per image, in request order")


class CaptionFailure(CaptionResponse):
    """No image got a caption: the error shape plus the same per-image ``results``."""

    error: str = Field(description="the images' common error code, or all_failed when they differ")
    detail: str = Field(description="what went wrong")


class ServiceLimits(BaseModel):
    """This server's configuration, as a client needs it."""

    model_config = ConfigDict(extra="allow")  # a new limit shows (and the schema test asks to document it)

    max_batch_size: int
    max_wait_ms: float
    queue_size: int
    max_files: int
    max_body_bytes: int
    max_pixels: int
    request_timeout_s: float
    max_beam_size: int
    max_length_limit: int
    default_beam_size: int
    default_max_length: int
    threads: int | None
    lanes: int = Field(
        description="batches run at once; beside another, a batch's encoder runs on threads/lanes threads"
    )
    decode_in: str = Field(description="processes (each decode killed past its request's time) or threads")
    auth_required: bool


class ModelInfo(BaseModel):
    """``GET /v1/model``: what the model is, and this server's limits. No absolute paths."""

    model_config = ConfigDict(protected_namespaces=(), extra="allow")

    model_id: str
    encoder: dict[str, Any] = Field(description="backbone name, feature size and preprocessing")
    runtime: dict[str, Any] = Field(description="which runtime runs the encoder and decoder, and why")
    decoder: dict[str, Any] = Field(description="the decoder's configuration")
    vocab_size: int
    device: str
    metadata: dict[str, Any] = Field(
        description="from the checkpoint: training data, configuration and metrics (paths reduced to their last part)"
    )
    trained_on: str | None = Field(None, description="in one sentence, what the model was trained on")
    precision: str | None = Field(None, description="the encoder's precision in use: fp32 or int8")
    precision_requested: str | None = Field(
        None, description="the precision asked for (setting, CAPTIONER_PRECISION or the checkpoint); int8 may fall back"
    )
    trust: dict[str, Any] | None = Field(
        None,
        exclude_if=omitted_when_none,
        description="what the per-caption trust fields rest on: the training data, calibration, the domain model",
    )
    service: ServiceLimits


class Health(BaseModel):
    status: str = Field(description="ok")


class Ready(BaseModel):
    status: str = Field(description="ready")
    model_id: str


__all__ = [
    "Candidate",
    "CaptionFailure",
    "CaptionItem",
    "CaptionResponse",
    "ErrorBody",
    "Health",
    "Label",
    "ModelInfo",
    "Ready",
    "ServiceLimits",
]
