"""YAML experiment configs: a validated schema, overrides, and building data, model and trainer.

A config names everything one training run needs::

    seed: 0
    custom_modules: [my_model.py]        # .py files or importable packages; relative to this file
    model:
      name: LightGCN                     # any registered model (custom ones included)
      params: {dim: 64, num_layers: 3}
    data:
      source: synthetic                  # synthetic | auto | csv | atomic | adjacency | split_folder
      path: null                         # the file or folder (relative to this file)
      synthetic: {n_users: 2000, n_items: 1000, n_interactions: 40000}
      options: {}                        # keyword arguments of the loader (e.g. sep, user_col)
    split:
      method: stratified                 # stratified | random | leave_one_out | temporal
      ratios: [0.8, 0.1, 0.1]
      options: {}                        # e.g. {by: timestamp, validation: true} or {cut: 1.0e9}
    trainer: {epochs: 8, batch_size: 2048, optimizer: adam, lr: 0.01, ...}
    evaluator: {ks: [10, 20], metrics: null, batch_size: 4096, protocol: full, num_negatives: 99}
    output: {dir: null}

Every key is checked: a wrong type or value raises ``ConfigError`` naming the dotted key
(``trainer.epochs: expected an int >= 0, got 'five'``); an unknown key lists the allowed ones. A
``split_folder`` source (``train.txt``/``valid.txt``/``test.txt``) is already split, so ``split``
does not apply to it.

Example
-------
>>> from recfast.config import load_config
>>> cfg = load_config({"model": {"name": "BPRMF"}, "trainer": {"epochs": 3}}, overrides=["trainer.lr=0.05"])
>>> cfg.trainer.epochs, cfg.trainer.lr, cfg.data.source
(3, 0.05, 'synthetic')
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

__all__ = [
    "ConfigError", "Config", "ModelConfig", "DataConfig", "SyntheticConfig", "SplitConfig", "TrainerConfig",
    "EarlyStoppingConfig", "EvaluatorConfig", "OutputConfig", "load_config", "parse_override", "apply_overrides",
    "config_to_dict", "load_custom_modules", "check_model_name", "build_data", "split_data", "build_model",
    "build_trainer", "evaluator_kwargs",
]


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type/range; the message names the key."""


def _f(default: Any = dataclasses.MISSING, *, factory: Any = None, **checks: Any) -> Any:
    """A dataclass field with range/choice checks in its metadata (ge, gt, choices)."""
    if factory is not None:
        return field(default_factory=factory, metadata=checks)
    return field(default=default, metadata=checks)


@dataclass
class ModelConfig:
    name: str = "LightGCN"
    params: dict[str, Any] = _f(factory=dict)


@dataclass
class SyntheticConfig:
    n_users: int = _f(2000, ge=1)
    n_items: int = _f(1000, ge=1)
    n_interactions: int = _f(40000, ge=0)


DATA_SOURCES = ("synthetic", "auto", "csv", "atomic", "adjacency", "split_folder")


@dataclass
class DataConfig:
    source: str = _f("synthetic", choices=DATA_SOURCES)
    path: str | None = None
    synthetic: SyntheticConfig = _f(factory=SyntheticConfig)
    options: dict[str, Any] = _f(factory=dict)


@dataclass
class SplitConfig:
    method: str = _f("stratified", choices=("stratified", "random", "leave_one_out", "temporal"))
    ratios: list[float] = _f(factory=lambda: [0.8, 0.1, 0.1])
    options: dict[str, Any] = _f(factory=dict)


@dataclass
class EarlyStoppingConfig:
    metric: str = _f()
    patience: int = _f(3, ge=1)
    mode: str = _f("max", choices=("max", "min"))
    min_delta: float = _f(0.0, ge=0)


@dataclass
class TrainerConfig:
    epochs: int = _f(8, ge=0)
    batch_size: int = _f(2048, ge=1)
    optimizer: str = "adam"
    lr: float = _f(0.01, gt=0)
    weight_decay: float = _f(0.0, ge=0)
    optimizer_kwargs: dict[str, Any] = _f(factory=dict)
    param_groups: list[dict[str, Any]] = _f(factory=list)
    scheduler: Union[str, dict[str, Any], None] = None
    grad_clip: float | None = _f(None, gt=0)
    amp: bool = False
    early_stopping: EarlyStoppingConfig | None = None
    eval_every: int = _f(1, ge=1)
    checkpoint_every: int = _f(1, ge=1)
    resume: bool = False
    progress: bool = True
    device: str = "auto"


@dataclass
class EvaluatorConfig:
    ks: list[int] = _f(factory=lambda: [10, 20], ge=1)
    metrics: list[str] | None = None
    batch_size: int = _f(4096, ge=1)
    protocol: str = _f("full", choices=("full", "sampled"))
    num_negatives: int = _f(99, ge=1)


@dataclass
class OutputConfig:
    dir: str | None = None


@dataclass
class Config:
    seed: int = _f(0, ge=0)
    custom_modules: list[str] = _f(factory=list)
    model: ModelConfig = _f(factory=ModelConfig)
    data: DataConfig = _f(factory=DataConfig)
    split: SplitConfig = _f(factory=SplitConfig)
    trainer: TrainerConfig = _f(factory=TrainerConfig)
    evaluator: EvaluatorConfig = _f(factory=EvaluatorConfig)
    output: OutputConfig = _f(factory=OutputConfig)


# -- validation ---------------------------------------------------------------------------------------
def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    return {int: "an int", float: "a number", bool: "a boolean (true/false)", str: "a string"}.get(tp, str(tp))


def _got(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})" if not isinstance(v, (dict, list)) else type(v).__name__


def _same_kind(value: Any, tp: Any) -> bool:
    """Whether ``value`` has the outer shape of ``tp`` (a list, a mapping or a scalar of that type)."""
    origin = typing.get_origin(tp)
    if origin is list:
        return isinstance(value, (list, tuple))
    if origin is dict or dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _convert(value: Any, tp: Any, path: str, checks: dict[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, path, checks)
            except ConfigError as e:
                errors.append(e)
        # one non-null alternative of the right kind: its own message is the most precise
        non_null = [a for a in args if a is not type(None)]
        if len(non_null) == 1 and errors and _same_kind(value, non_null[0]):
            raise errors[0]
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {_got(value)}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {_describe(tp)}, got {_got(value)}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{path}[{i}]", checks) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_got(value)}")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{path}: keys must be strings, got {bad[0]!r}")
        return dict(value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:  # pragma: no cover - schema error
        raise TypeError(f"config schema: unsupported type {tp!r} at {path}")
    rng = ""
    if "ge" in checks:
        rng = f" >= {checks['ge']}"
    elif "gt" in checks:
        rng = f" > {checks['gt']}"
    if not ok:
        raise ConfigError(f"{path}: expected {_describe(tp)}{rng}, got {_got(value)}")
    if ("ge" in checks and value < checks["ge"]) or ("gt" in checks and value <= checks["gt"]):
        raise ConfigError(f"{path}: expected {_describe(tp)}{rng}, got {value!r}")
    if tp is float:
        value = float(value)
    if "choices" in checks and value not in checks["choices"]:
        raise ConfigError(f"{path}: expected one of {', '.join(checks['choices'])}, got {value!r}")
    return value


def _build(cls: Any, raw: Any, path: str) -> Any:
    where = path or "the config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_got(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{path}." if path else ""
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown key; allowed keys{' in ' + path if path else ''}: "
                              f"{', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = _convert(raw[name], hints[name], prefix + name, dict(f.metadata))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"{prefix}{name}: required")
    return cls(**kwargs)


def _check_semantics(cfg: Config) -> None:
    r = cfg.split.ratios
    if not 2 <= len(r) <= 3 or any(x < 0 for x in r) or abs(sum(r) - 1.0) > 1e-6:
        raise ConfigError(f"split.ratios: expected 2 or 3 non-negative numbers summing to 1, got {r}")
    if cfg.data.source not in ("synthetic",) and not cfg.data.path:
        raise ConfigError(f"data.path: required for data.source {cfg.data.source!r}")
    if cfg.data.source == "synthetic":
        s = cfg.data.synthetic
        if s.n_interactions > s.n_users * s.n_items:
            raise ConfigError(f"data.synthetic.n_interactions: expected at most n_users * n_items = "
                              f"{s.n_users * s.n_items}, got {s.n_interactions}")
    if not cfg.model.name:
        raise ConfigError("model.name: expected a registered model name, got ''")
    if cfg.evaluator.metrics is not None and not cfg.evaluator.metrics:
        raise ConfigError("evaluator.metrics: expected a non-empty list or null (the evaluator's defaults)")
    if not cfg.evaluator.ks:
        raise ConfigError("evaluator.ks: expected a non-empty list of cut-offs")
    if isinstance(cfg.trainer.scheduler, dict) and not isinstance(cfg.trainer.scheduler.get("name"), str):
        raise ConfigError("trainer.scheduler.name: required (e.g. cosine, step, StepLR)")
    from .trainers.optimizers import OPTIMIZERS, check_param_groups

    if cfg.trainer.optimizer.lower() not in OPTIMIZERS:
        raise ConfigError(f"trainer.optimizer: expected one of {', '.join(sorted(OPTIMIZERS))}, "
                          f"got {cfg.trainer.optimizer!r}")
    for i, g in enumerate(cfg.trainer.param_groups):
        if "optimizer" in g and (not isinstance(g["optimizer"], str) or g["optimizer"].lower() not in OPTIMIZERS):
            raise ConfigError(f"trainer.param_groups[{i}].optimizer: expected one of {', '.join(sorted(OPTIMIZERS))}, "
                              f"got {g['optimizer']!r}")
    try:
        check_param_groups(cfg.trainer.param_groups)
    except ValueError as e:
        msg = re.sub(r"\['(\w+)'\]", r".\1", str(e).removeprefix("Trainer: "))
        raise ConfigError("trainer." + msg.replace(" must be", ": expected", 1)) from None


# -- overrides --------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"trainer.lr=0.01"`` -> (["trainer", "lr"], 0.01); the value is parsed as YAML."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. trainer.lr=0.01")
    key, _, raw = text.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {text}: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text}: cannot parse the value: {str(e).splitlines()[0]}") from None
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Set dotted keys in a raw config dict (creating mappings as needed); returns ``raw``."""
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"--set {text}: {'.'.join(parts[:i + 1])} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return raw


# -- loading ----------------------------------------------------------------------------------------
def _resolve_path(p: str, base: Path) -> str:
    q = Path(os.path.expanduser(p))
    return str(q if q.is_absolute() else (base / q).resolve())


def load_config(source: str | os.PathLike[str] | dict[str, Any] | None = None, *,
                overrides: list[str] | tuple[str, ...] = (), base_dir: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a config from a YAML file or a dict, after applying ``key=value`` overrides.

    Relative ``data.path`` and ``custom_modules`` file paths are resolved against the YAML file's
    folder (or ``base_dir``, default the current directory, for dicts), so the returned config is
    independent of the working directory. Importable package names in ``custom_modules`` are kept.
    """
    import yaml

    if source is None:
        raw: Any = {}
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    elif isinstance(source, dict):
        raw = _deepcopy(source)
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
        base = path.resolve().parent if base_dir is None else Path(base_dir)
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping at the top level, got {type(raw).__name__}")
    apply_overrides(raw, overrides)
    cfg: Config = _build(Config, raw, "")
    _check_semantics(cfg)
    if cfg.data.path:
        cfg.data.path = _resolve_path(cfg.data.path, base)
    mods = []
    for m in cfg.custom_modules:
        looks_like_path = m.endswith(".py") or "/" in m or os.sep in m or (base / m).exists()
        mods.append(_resolve_path(m, base) if looks_like_path else m)
    cfg.custom_modules = mods
    return cfg


def _deepcopy(x: Any) -> Any:
    import copy

    return copy.deepcopy(x)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """A plain dict (for YAML/JSON) of a config."""
    return dataclasses.asdict(cfg)


def load_custom_modules(cfg: Config) -> None:
    """Import ``custom_modules`` so the models they define are registered."""
    from .registry import load_custom_modules as _load

    for i, m in enumerate(cfg.custom_modules):
        try:
            _load([m])
        except (ImportError, FileNotFoundError, ValueError, SyntaxError) as e:
            raise ConfigError(f"custom_modules[{i}]: cannot load {m!r}: {e}") from None


# -- building -----------------------------------------------------------------------------------------
def build_data(cfg: Config) -> tuple[Any, Any, Any]:
    """(train, valid or None, test) ``Interactions`` in one id space, as the config describes."""
    from . import data

    d = cfg.data
    opts = dict(d.options)
    source = d.source
    if source == "synthetic":
        try:
            x = data.synthetic(d.synthetic.n_users, d.synthetic.n_items, d.synthetic.n_interactions, seed=cfg.seed,
                               **opts)
        except TypeError as e:
            raise ConfigError(f"data.options: {e}") from None
    else:
        path = Path(d.path)  # type: ignore[arg-type]
        if not path.exists():
            raise ConfigError(f"data.path: no such file or folder: {path}")
        if source == "auto":
            if path.is_dir():
                source = "split_folder"
            elif path.suffix == ".inter":
                source = "atomic"
            elif path.suffix in (".csv", ".tsv"):
                source = "csv"
                if path.suffix == ".tsv":
                    opts.setdefault("sep", "\t")
            else:
                raise ConfigError(f"data.source: cannot tell the format of {path.name}; set data.source to one of "
                                  f"csv, atomic, adjacency, split_folder")
        loader = {"csv": "load_csv", "atomic": "load_atomic", "adjacency": "load_adjacency_list",
                  "split_folder": "load_split_dataset"}[source]
        fn = getattr(data, loader, None)
        if fn is None:
            raise ConfigError(f"data.source: recfast.data.{loader} is not available in this build")
        try:
            out = fn(path, **opts)
        except TypeError as e:
            raise ConfigError(f"data.options: {e}") from None
        if source == "split_folder":
            train, valid, test = out
            return train, valid, test
        x = out
    return split_data(cfg, x)


def split_data(cfg: Config, x: Any) -> tuple[Any, Any, Any]:
    from . import data

    s = cfg.split
    opts = dict(s.options)
    try:
        if s.method in ("stratified", "random"):
            fn = data.stratified_split if s.method == "stratified" else data.random_split
            parts = fn(x, tuple(s.ratios), seed=cfg.seed, **opts)
        elif s.method == "leave_one_out":
            if opts.get("by") == "random":
                opts.setdefault("seed", cfg.seed)
            parts = data.leave_one_out(x, **opts)
        else:
            if "cut" not in opts:
                opts.setdefault("ratios", tuple(s.ratios))
            parts = data.temporal_split(x, **opts)
    except TypeError as e:
        raise ConfigError(f"split.options: {e}") from None
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    return parts[0], None, parts[1]


def check_model_name(cfg: Config) -> type:
    """The registered class of ``model.name`` (custom modules must be loaded first)."""
    from .registry import get_model

    try:
        return get_model(cfg.model.name)
    except KeyError as e:
        raise ConfigError(f"model.name: {e.args[0].removeprefix('get_model: ')}") from None


def build_model(cfg: Config, n_users: int, n_items: int) -> Any:
    """The configured model (custom modules must be loaded first)."""
    from .registry import build_model as _build_model

    check_model_name(cfg)
    try:
        return _build_model(cfg.model.name, dict(cfg.model.params), n_users=n_users, n_items=n_items)
    except TypeError as e:
        raise ConfigError(f"model.params: {e}") from None


def evaluator_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of ``recfast.eval.Evaluator`` from ``cfg.evaluator``."""
    e = cfg.evaluator
    kw: dict[str, Any] = {"ks": tuple(e.ks), "batch_size": e.batch_size, "protocol": e.protocol}
    if e.metrics is not None:
        kw["metrics"] = tuple(e.metrics)
    if e.protocol == "sampled":
        kw["num_negatives"] = e.num_negatives
        kw["seed"] = cfg.seed
    return kw


def build_trainer(cfg: Config, model: Any, train: Any, valid: Any, *, out_dir: str | os.PathLike[str] | None = None,
                  evaluator: Any = None) -> Any:
    """A ``recfast.Trainer`` with the config's settings; checkpoints and logs go to ``out_dir``
    (``checkpoints/`` and ``log.jsonl``) when given."""
    from .trainers import Trainer

    t = cfg.trainer
    es = None if t.early_stopping is None else dataclasses.asdict(t.early_stopping)
    out = Path(out_dir) if out_dir is not None else None
    return Trainer(model, train, valid, epochs=t.epochs, batch_size=t.batch_size, optimizer=t.optimizer, lr=t.lr,
                   weight_decay=t.weight_decay, optimizer_kwargs=t.optimizer_kwargs, param_groups=t.param_groups,
                   scheduler=t.scheduler, grad_clip=t.grad_clip, amp=t.amp, early_stopping=es,
                   eval_every=t.eval_every, evaluator=evaluator if evaluator is not None else evaluator_kwargs(cfg),
                   checkpoint_dir=None if out is None else out / "checkpoints", checkpoint_every=t.checkpoint_every,
                   resume=t.resume, log_dir=out, progress=t.progress, seed=cfg.seed, device=t.device)
