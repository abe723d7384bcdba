"""Placeholder: filled in by the optim work."""

__all__: list[str] = []
