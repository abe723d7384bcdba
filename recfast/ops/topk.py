"""Placeholder: filled in by the topk work."""

__all__: list[str] = []
