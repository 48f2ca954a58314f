"""AdaptFace: adapting vision foundation models to face recognition with very little data."""

__version__ = "0.1.0"
