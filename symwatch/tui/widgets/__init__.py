"""The run view's widgets, one per module."""
