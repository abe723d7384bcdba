"""Placeholder: filled in by the graph work."""

__all__: list[str] = []
