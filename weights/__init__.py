"""Package-data folder holding the default trained checkpoint (``weights/default``)."""
