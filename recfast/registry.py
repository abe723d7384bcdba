"""A registry of model classes, so configs, the CLI and checkpoints can name models by string.

User-written models plug in with the decorator::

    @recfast.register_model("MyEASE")
    class MyEASE(recfast.models.Recommender):
        ...

and are then built by ``recfast.get_model("MyEASE")`` or a config's ``model.name``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

__all__ = ["register_model", "get_model", "list_models", "build_model", "load_custom_modules"]

_MODELS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator: make a model class available under ``name``.

    Example
    -------
    >>> import recfast
    >>> @recfast.register_model("DocExample")
    ... class DocExample(recfast.models.Popularity):
    ...     pass
    >>> recfast.get_model("DocExample") is DocExample
    True
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_model: name must be a non-empty string, got {name!r}")

    def deco(cls: T) -> T:
        existing = _MODELS.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"register_model: the name {name!r} is already taken by {existing.__module__}.{existing.__qualname__}")
        _MODELS[name] = cls
        cls.registered_name = name  # type: ignore[attr-defined]
        return cls

    return deco


def get_model(name: str) -> type:
    """The model class registered under ``name`` (KeyError lists the known names)."""
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(f"get_model: no model named {name!r}; registered: {', '.join(sorted(_MODELS))}") from None


def list_models() -> list[str]:
    """Names of all registered models."""
    return sorted(_MODELS)


def build_model(name: str, params: dict[str, Any] | None = None, **dataset_info: Any) -> Any:
    """Instantiate model ``name`` from a params dict plus dataset info (``n_users``, ``n_items``, ...)."""
    cls = get_model(name)
    return cls.from_params(dict(params or {}), **dataset_info)


def load_custom_modules(paths: list[str | Path], *, base_dir: str | Path | None = None) -> None:
    """Import user modules (``.py`` files or importable package names) so their models register.

    Relative file paths are resolved against ``base_dir`` (the config file's folder).
    """
    for entry in paths:
        p = Path(entry)
        if base_dir is not None and not p.is_absolute():
            p = Path(base_dir) / p
        if p.suffix == ".py" or p.exists():
            if p.is_dir():
                init = p / "__init__.py"
                if not init.exists():
                    raise ValueError(f"custom_modules: {p} is a folder without __init__.py")
                sys.path.insert(0, str(p.parent))
                importlib.import_module(p.name)
                continue
            if not p.exists():
                raise FileNotFoundError(f"custom_modules: no such file {p}")
            mod_name = f"recfast_custom_{p.stem}"
            spec = importlib.util.spec_from_file_location(mod_name, p)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(str(entry))
            except ImportError as e:
                raise ValueError(f"custom_modules: cannot import {entry!r}: {e}") from e
