"""Thin HTTP layers over :class:`service.captioning.CaptionService`."""
