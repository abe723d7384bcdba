"""Placeholder: filled in by the sampling work."""

__all__: list[str] = []
