"""The built-in scenes dataset: sprites of everyday objects on coloured backgrounds.

It needs no download, so the whole product can be trained, served and evaluated
offline. ``generate_scenes`` writes a dataset in the COCO captions format with a
ground truth per image; ``captioner.metrics.scene`` scores captions against it.
"""

from .captions import describe_scene
from .catalogue import BACKGROUNDS, CATEGORIES, Background, Category
from .dataset import ScenesSummary, generate_scenes, make_example, render_preview
from .generator import Scene, SceneConfig, SceneObject, render_scene, sample_scene

__all__ = [
    "BACKGROUNDS",
    "CATEGORIES",
    "Background",
    "Category",
    "Scene",
    "SceneConfig",
    "SceneObject",
    "ScenesSummary",
    "describe_scene",
    "generate_scenes",
    "make_example",
    "render_preview",
    "render_scene",
    "sample_scene",
]
