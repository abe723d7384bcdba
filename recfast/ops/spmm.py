"""Placeholder: filled in by the spmm work."""

__all__: list[str] = []
