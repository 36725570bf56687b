"""Request options: strict parsing, allowed ranges and unknown names.

* Numbers are plain ASCII: ``3`` is a beam size, ``3.0``, `` 3`` and ``٣`` (an Arabic-Indic
  digit, which Python's ``int`` would accept) are not. The same rule holds for query
  parameters and multipart form fields.
* Ranges come from :mod:`captioner.options` (the same words as the command line), capped
  by this server's settings (``max_beam_size``, ``max_length_limit``, ``request_timeout_s``).
* A query parameter the endpoint does not know is a 422 that lists the known ones, so a
  typo (``?beam=3``) is never silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BeforeValidator

from captioner.options import BEAM_SIZE, LENGTH_PENALTY, MAX_LENGTH, NO_REPEAT_NGRAM, Range

from .errors import APIError
from .settings import Settings

ASCII_INT = re.compile(r"[+-]?[0-9]{1,18}")
ASCII_NUMBER = re.compile(r"[+-]?(?:[0-9]{1,18}(?:\.[0-9]{0,18})?|\.[0-9]{1,18})(?:[eE][+-]?[0-9]{1,3})?")


def beam_range(settings: Settings) -> Range:
    return Range("beam_size", BEAM_SIZE.low, min(BEAM_SIZE.high, settings.max_beam_size))


def length_range(settings: Settings) -> Range:
    return Range("max_length", MAX_LENGTH.low, min(MAX_LENGTH.high, settings.max_length_limit))


#: The shortest time a request may allow itself: below it a request could only ever end in
#: 504 (``timeout=5e-324`` did), so it is refused with 422 naming the range instead.
MIN_TIMEOUT_S = 0.5


def timeout_range(settings: Settings) -> Range:
    low = min(MIN_TIMEOUT_S, settings.request_timeout_s)
    return Range("timeout", low, settings.request_timeout_s, integer=False)


#: Beam search's length penalty and the no-repeat n-gram size: the command line's ranges,
#: under the API's names (no server setting narrows them).
LENGTH_PENALTY_RANGE = Range("length_penalty", LENGTH_PENALTY.low, LENGTH_PENALTY.high, integer=False)
NO_REPEAT_NGRAM_RANGE = Range("no_repeat_ngram_size", NO_REPEAT_NGRAM.low, NO_REPEAT_NGRAM.high)


def _strict(name: str, pattern: re.Pattern[str], what: str) -> Callable[[object], object]:
    def check(value: object) -> object:
        if isinstance(value, str) and not pattern.fullmatch(value):
            raise ValueError(f"{name} must be {what} written in ASCII digits, got {value!r}")
        return value

    return check


def ascii_int(name: str) -> BeforeValidator:
    """Validator for an integer query parameter: ASCII digits only (no ``3.0``, no ``٣``)."""
    return BeforeValidator(_strict(name, ASCII_INT, "a whole number"))


def ascii_number(name: str) -> BeforeValidator:
    """Validator for a decimal query parameter: ASCII digits, point and exponent only."""
    return BeforeValidator(_strict(name, ASCII_NUMBER, "a number"))


def form_number(name: str, text: str, allowed: Range) -> float:
    """A multipart form option: ASCII digits in range, else 422 ``invalid_option`` naming the range."""
    pattern = ASCII_INT if allowed.integer else ASCII_NUMBER
    if not pattern.fullmatch(text):
        raise APIError(422, "invalid_option", f"{allowed.message()}, got {text!r}")
    return float(text) if not allowed.integer else int(text)


def check_range(value: float | None, allowed: Range) -> None:
    """422 ``invalid_option`` naming the allowed range when ``value`` is outside it."""
    if value is not None and not allowed.contains(value):
        raise APIError(422, "invalid_option", f"{allowed.message()}, got {value:g}")


def known_query_names(route: APIRoute) -> list[str]:
    """The query parameters an endpoint declares (its dependencies' included)."""
    names: set[str] = set()
    stack: list[Dependant] = [route.dependant]
    while stack:
        dependant = stack.pop()
        names.update(p.alias for p in dependant.query_params)
        stack.extend(dependant.dependencies)
    return sorted(names)


async def reject_unknown_query(request: Request) -> None:
    """Dependency: 422 ``unknown_parameter`` for a query parameter the endpoint does not take."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = known_query_names(route)
    unknown = sorted(set(request.query_params) - set(known))
    if not unknown:
        return
    names = ", ".join(repr(u[:40]) for u in unknown[:5])
    what = f"unknown query parameter {names}" if len(unknown) == 1 else f"unknown query parameters {names}"
    takes = f"known: {', '.join(known)}" if known else "this endpoint takes no query parameters"
    raise APIError(422, "unknown_parameter", f"{what} ({takes})")
