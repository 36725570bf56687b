"""The torch side: model definitions, the PyTorch reference path, export and int8 calibration.

Nothing in the torch-free runtime (:mod:`captioner.runtime`, the front ends, the service)
imports this package; it imports them (:class:`ReferenceCaptioner` shares the runtime's
image path and search).
"""

from .reference import ReferenceCaptioner, pick_device

__all__ = ["ReferenceCaptioner", "pick_device"]
