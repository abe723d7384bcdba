"""Placeholder: filled in by the bpr work."""

__all__: list[str] = []
