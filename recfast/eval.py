"""Placeholder: filled in by the eval work."""

__all__: list[str] = []
