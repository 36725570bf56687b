"""Training: datasets and their formats, the built-in scenes generator, the feature cache
and the training loop. May import ``captioner``; ``captioner`` never imports this package."""
