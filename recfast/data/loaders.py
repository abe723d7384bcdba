"""Placeholder: the training loaders."""

__all__: list[str] = []
