"""The ``recfast`` command (also ``python -m recfast``).

``recfast train`` with no arguments trains LightGCN on a built-in synthetic dataset (2,000 users,
1,000 items, 40,000 interactions) and prints its metrics; a YAML config and flags choose the model,
data and settings::

    recfast train                                     # the default job
    recfast train examples/config_lightgcn.yaml --epochs 5 --set trainer.lr=0.01
    recfast train --model BPRMF --params '{dim: 64}' --data ../shared/data/ml-1m --out runs/bpr
    recfast evaluate runs/bpr --split test            # a saved run on a split
    recfast recommend runs/bpr --users 0 1 2 --k 10 --format json
    recfast bench                                     # the benchmark scripts in benchmarks/, --quick
    torchrun --nproc_per_node=2 -m recfast train      # multi-process training

Errors in configs and flags exit with status 2 and a one-line message (set RECFAST_TRACEBACK=1 for
the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main"]

DEFAULT_OUT = "runs"


class UsageError(ValueError):
    """A bad command line (exit status 2)."""


# -- train ------------------------------------------------------------------------------------------
def _train_overrides(args: argparse.Namespace) -> list[str]:
    """Flags as ``key=value`` overrides (applied before ``--set``)."""
    sets: list[str] = []

    def put(key: str, value: Any) -> None:
        sets.append(f"{key}={json.dumps(value)}")

    if args.model is not None:
        put("model.name", args.model)
    if args.params is not None:
        import yaml

        try:
            params = yaml.safe_load(args.params)
        except yaml.YAMLError as e:
            raise UsageError(f"--params: cannot parse {args.params!r}: {str(e).splitlines()[0]}") from None
        if not isinstance(params, dict):
            raise UsageError(f"--params: expected a mapping such as '{{\"dim\": 64}}', got {args.params!r}")
        put("model.params", params)
    if args.data is not None:
        if args.data == "synthetic":
            put("data.source", "synthetic")
        else:
            put("data.source", "auto")
            put("data.path", str(Path(args.data).expanduser().resolve()))
    if args.synthetic is not None:
        try:
            n_users, n_items, n = (int(v) for v in args.synthetic.lower().split("x"))
        except ValueError:
            raise UsageError(f"--synthetic: expected USERSxITEMSxINTERACTIONS such as 2000x1000x40000, "
                             f"got {args.synthetic!r}") from None
        put("data.source", "synthetic")
        put("data.synthetic", {"n_users": n_users, "n_items": n_items, "n_interactions": n})
    for flag, key in (("epochs", "trainer.epochs"), ("batch_size", "trainer.batch_size"), ("lr", "trainer.lr"),
                      ("optimizer", "trainer.optimizer"), ("device", "trainer.device"), ("seed", "seed")):
        v = getattr(args, flag)
        if v is not None:
            put(key, v)
    if args.early_stopping is not None:
        put("trainer.early_stopping", {"metric": args.early_stopping, "patience": 3})
    if args.resume:
        put("trainer.resume", True)
    if args.no_progress:
        put("trainer.progress", False)
    if args.out is not None:
        put("output.dir", str(Path(args.out).expanduser().resolve()))
    if args.custom_module:
        put("custom_modules", [str(Path(m).resolve()) if m.endswith(".py") else m for m in args.custom_module])
    return sets + list(args.set or [])


def _metric_line(metrics: dict[str, float], names: Sequence[str]) -> str:
    return "  ".join(f"{n} {metrics[n]:.4f}" for n in names if n in metrics)


def _headline_metrics(cfg: Any) -> list[str]:
    k = max(cfg.evaluator.ks)
    names = [f"recall@{k}", f"ndcg@{k}"]
    if cfg.trainer.early_stopping is not None and cfg.trainer.early_stopping.metric not in names:
        names.append(cfg.trainer.early_stopping.metric)
    return names


def _print_table(columns: dict[str, dict[str, float]]) -> None:
    names = sorted({m for col in columns.values() for m in col},
                   key=lambda m: (m.split("@")[0], int(m.split("@")[1]) if m.partition("@")[2].isdigit() else 0))
    heads = list(columns)
    print(f"{'metric':<16}" + "".join(f"{h:>10}" for h in heads))
    for m in names:
        row = "".join(f"{columns[h][m]:>10.4f}" if m in columns[h] else f"{'-':>10}" for h in heads)
        print(f"{m:<16}{row}")


def _id_maps(train: Any) -> dict[str, list[Any]] | None:
    maps = {}
    for key, attr in (("users", "user_ids"), ("items", "item_ids")):
        table = getattr(train, attr, None)
        if table is not None:
            maps[key] = [v.item() if hasattr(v, "item") else v for v in table]
    return maps or None


def _cmd_train(args: argparse.Namespace) -> int:
    import yaml

    import recfast
    from . import config as C

    t_start = time.perf_counter()
    cfg_path = args.config_opt or args.config
    if args.config_opt and args.config:
        raise UsageError("give the config file once (positional or --config)")
    cfg = C.load_config(cfg_path, overrides=_train_overrides(args))
    C.load_custom_modules(cfg)
    C.check_model_name(cfg)  # before the data are built: a typo fails fast
    train, valid, test = C.build_data(cfg)
    model = C.build_model(cfg, train.n_users, train.n_items)
    out = Path(cfg.output.dir) if cfg.output.dir else Path(DEFAULT_OUT) / cfg.model.name
    headline = _headline_metrics(cfg)

    def on_epoch(tr: Any, rec: dict[str, Any]) -> None:
        if not tr.is_main:
            return
        if "loss" not in rec:  # a classical model: fitted once
            parts = [f"fitted in {rec['seconds']:.2f}s"]
        else:
            parts = [f"epoch {rec['epoch'] + 1:>3}/{tr.epochs}"]
        if "loss" in rec:
            parts.append(f"loss {rec['loss']:.4f}  {rec['samples_per_s'] / 1e3:8.1f}k samples/s  {rec['seconds']:6.2f}s")
        if rec.get("metrics"):
            parts.append("valid " + _metric_line(rec["metrics"], headline))
        print("  ".join(parts), flush=True)

    trainer = C.build_trainer(cfg, model, train, valid, out_dir=out)
    trainer.callbacks.append(on_epoch)
    main_rank = trainer.is_main
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(C.config_to_dict(cfg), sort_keys=False))
        src = "synthetic " + "x".join(str(v) for v in (cfg.data.synthetic.n_users, cfg.data.synthetic.n_items,
                                                       cfg.data.synthetic.n_interactions)) \
            if cfg.data.source == "synthetic" else cfg.data.path
        sizes = f"{len(train)} train" + (f" / {len(valid)} valid" if valid is not None else "") + f" / {len(test)} test"
        ws = f", {trainer.world_size} processes" if trainer.world_size > 1 else ""
        print(f"recfast {recfast.__version__}: {cfg.model.name} on {src} ({train.n_users} users, {train.n_items} items, "
              f"{sizes} interactions), device {trainer.device}{ws}", flush=True)
    try:
        history = trainer.fit()
        test_metrics = trainer.evaluate(test) if len(test) else {}
    finally:
        trainer.close()
    if not main_rank:
        return 0
    model.save(out / "model.pt")
    maps = _id_maps(train)
    if maps is not None:
        (out / "ids.json").write_text(json.dumps(maps))
    result = {"model": cfg.model.name, "best_epoch": trainer.best_epoch, "valid": trainer.best_metrics,
              "test": test_metrics, "epochs_run": len(history), "seconds": time.perf_counter() - t_start}
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    print()
    columns = {}
    if trainer.best_metrics:
        columns["valid"] = trainer.best_metrics
    if test_metrics:
        columns["test"] = test_metrics
    if columns:
        _print_table(columns)
    stop = f" (early stop, best epoch {trainer.best_epoch + 1})" if trainer.stopped_early else ""
    print(f"\nsaved model, config, metrics, log and checkpoint to {out}{stop}; "
          f"{time.perf_counter() - t_start:.1f}s", flush=True)
    return 0


# -- evaluate / recommend ------------------------------------------------------------------------------
def _run_paths(target: str, config: str | None) -> tuple[Path, Path | None]:
    """(model file, config file or None) from a run folder or a model file."""
    p = Path(target)
    if p.is_dir():
        model = p / "model.pt"
        if not model.is_file():
            raise FileNotFoundError(f"{p} has no model.pt (is it the output folder of recfast train?)")
        cfg = Path(config) if config else (p / "config.yaml" if (p / "config.yaml").is_file() else None)
        return model, cfg
    if not p.is_file():
        raise FileNotFoundError(f"no such run folder or model file: {p}")
    cfg = Path(config) if config else (p.parent / "config.yaml" if (p.parent / "config.yaml").is_file() else None)
    return p, cfg


def _load_model(path: Path, cfg: Any) -> Any:
    from . import config as C
    from .models.base import Recommender

    if cfg is not None:
        C.load_custom_modules(cfg)
    try:
        return Recommender.load(path, map_location="cpu")
    except KeyError as e:
        raise C.ConfigError(f"{path}: {e.args[0]} (load the module that defines it with custom_modules)") from None


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import config as C
    from .trainers import Trainer

    model_path, cfg_path = _run_paths(args.run, args.config)
    if cfg_path is None:
        raise UsageError(f"no config.yaml beside {model_path}; pass --config to say which data and split to use")
    cfg = C.load_config(cfg_path, overrides=list(args.set or []))
    model = _load_model(model_path, cfg)
    train, valid, test = C.build_data(cfg)
    if (train.n_users, train.n_items) != (model.n_users, model.n_items):
        raise C.ConfigError(f"the model was trained on {model.n_users} users x {model.n_items} items, but the "
                            f"configured data has {train.n_users} x {train.n_items}")
    split = {"test": test, "valid": valid}[args.split]
    if split is None:
        raise UsageError(f"--split {args.split}: the configured data has no {args.split} split")
    tr = Trainer(model, train, valid, epochs=0, evaluator=C.evaluator_kwargs(cfg), progress=False,
                 device=args.device or cfg.trainer.device, seed=cfg.seed)
    try:
        metrics = tr.evaluate(split, exclude=None if args.split == "test" else [])
    finally:
        tr.close()
    if not tr.is_main:
        return 0
    print(f"{model_path}: {type(model).__name__} on the {args.split} split ({len(split)} interactions)")
    _print_table({args.split: metrics})
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


def _parse_users(args: argparse.Namespace, maps: dict[str, list[Any]] | None, n_users: int) -> tuple[list[int], list[Any]]:
    raw: list[str] = []
    if args.users:
        for u in args.users:
            raw += [x for x in u.split(",") if x]
    if args.users_file:
        raw += [line.strip() for line in Path(args.users_file).read_text().splitlines() if line.strip()]
    if args.all_users:
        idx = list(range(n_users))
        return idx, [maps["users"][i] for i in idx] if maps and "users" in maps else idx
    if not raw:
        raise UsageError("recommend: give --users, --users-file or --all-users")
    if maps and "users" in maps:
        lookup = {str(v): i for i, v in enumerate(maps["users"])}
        bad = [u for u in raw if u not in lookup]
        if bad:
            raise UsageError(f"recommend: unknown user id(s) {bad[:5]} (not in the training data)")
        return [lookup[u] for u in raw], [maps["users"][lookup[u]] for u in raw]
    try:
        idx = [int(u) for u in raw]
    except ValueError:
        raise UsageError(f"recommend: user ids must be integers for this model, got {raw[:5]}") from None
    bad = [u for u in idx if not 0 <= u < n_users]
    if bad:
        raise UsageError(f"recommend: user id(s) {bad[:5]} out of range [0, {n_users})")
    return idx, idx


def _cmd_recommend(args: argparse.Namespace) -> int:
    import torch

    from . import config as C

    model_path, cfg_path = _run_paths(args.run, args.config)
    cfg = C.load_config(cfg_path) if cfg_path is not None else None
    model = _load_model(model_path, cfg)
    ids_file = model_path.parent / "ids.json"
    maps = json.loads(ids_file.read_text()) if ids_file.is_file() else None
    if args.k <= 0:
        raise UsageError(f"--k must be positive, got {args.k}")
    idx, originals = _parse_users(args, maps, model.n_users)
    items, scores = model.recommend(torch.tensor(idx, dtype=torch.int64), k=args.k, exclude_seen=not args.include_seen)
    item_map = maps.get("items") if maps else None
    rows = []
    for u, its, scs in zip(originals, items.tolist(), scores.tolist()):
        recs = [(item_map[i] if item_map else i, s) for i, s in zip(its, scs) if i >= 0]
        rows.append((u, recs))
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        if args.format == "json":
            objs = [json.dumps({"user": u, "items": [i for i, _ in r], "scores": [round(s, 6) for _, s in r]})
                    for u, r in rows]
            out.write("[\n" + ",\n".join(objs) + "\n]\n")
        else:
            import csv

            w = csv.writer(out)
            w.writerow(["user", "rank", "item", "score"])
            for u, r in rows:
                for rank, (i, s) in enumerate(r, 1):
                    w.writerow([u, rank, i, f"{s:.6g}"])
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


# -- bench --------------------------------------------------------------------------------------------
def _find_bench_dir(given: str | None) -> Path | None:
    if given:
        p = Path(given)
        if not p.is_dir():
            raise FileNotFoundError(f"--bench-dir: no such folder {p}")
        return p if any(p.glob("bench_*.py")) else None
    import recfast

    for cand in (Path.cwd() / "benchmarks", Path(recfast.__file__).resolve().parent.parent / "benchmarks",
                 Path(recfast.__file__).resolve().parent / "benchmarks"):
        if cand.is_dir() and any(cand.glob("bench_*.py")):
            return cand
    return None


def _records(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict):
        data = data.get("results", [data])
    return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []


def _chart(records: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rs = [r for r in records if isinstance(r.get("speedup"), (int, float)) and r["speedup"] > 0]
    if not rs:
        return False
    labels = [f"{r.get('op')} vs {r.get('baseline')}\n" + " ".join(f"{k}={v}" for k, v in (r.get("params") or {}).items())
              for r in rs]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rs) + 1.2))
    ax.barh(range(len(rs)), [r["speedup"] for r in rs], color="tab:blue")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rs)), labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("speedup of recfast over the baseline (x, log scale)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _cmd_bench(args: argparse.Namespace) -> int:
    bench_dir = _find_bench_dir(args.bench_dir)
    if bench_dir is None:
        print("recfast bench: no benchmarks/ folder with bench_*.py scripts was found (looked in the current "
              "directory and beside the installed package); run it from a recfast source checkout or pass "
              "--bench-dir", file=sys.stderr)
        return 1
    scripts = sorted(bench_dir.glob("bench_*.py"))
    if args.only:
        wanted = {w.strip().removeprefix("bench_").removesuffix(".py") for w in args.only.split(",")}
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
        if not scripts:
            raise UsageError(f"--only {args.only}: no such benchmark in {bench_dir}")
    out = Path(args.out) if args.out else Path("bench_results.json")
    records: list[dict[str, Any]] = []
    failed: list[str] = []
    env = {**os.environ}
    root = str(bench_dir.resolve().parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if (Path(root) / "recfast").is_dir() \
        else env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="recfast-bench-") as tmp:
        for s in scripts:
            json_out = Path(tmp) / f"{s.stem}.json"
            cmd = [sys.executable, str(s), "--out", str(json_out), "--device", args.device]
            if not args.full:
                cmd.append("--quick")
            print(f"== {s.name} {'(full)' if args.full else '--quick'}", flush=True)
            try:
                proc = subprocess.run(cmd, env=env, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                failed.append(f"{s.name} (timed out after {args.timeout}s)")
                continue
            if proc.returncode != 0 or not json_out.is_file():
                failed.append(f"{s.name} (exit status {proc.returncode})")
                continue
            try:
                records += [{**r, "script": s.name} for r in _records(json.loads(json_out.read_text()))]
            except json.JSONDecodeError as e:
                failed.append(f"{s.name} (unreadable JSON: {e})")
    print()
    if records:
        rows = []
        for r in records:
            sp = r.get("speedup")
            rows.append([str(r.get("op")), str(r.get("baseline")),
                         " ".join(f"{k}={v}" for k, v in (r.get("params") or {}).items()),
                         f"{r.get('recfast_ms', float('nan')):.3f}", f"{r.get('baseline_ms', float('nan')):.3f}",
                         f"{sp:.2f}x" if isinstance(sp, (int, float)) else "-"])
        heads = ["op", "baseline", "params", "recfast ms", "baseline ms", "speedup"]
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]
        for row in [heads, *rows]:
            print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": not args.full, "device": args.device, "failed": failed, "results": records},
                              indent=2) + "\n")
    print(f"\nwrote {out}", end="")
    png = out.with_suffix(".png")
    if _chart(records, png):
        print(f" and {png}", end="")
    print()
    for f in failed:
        print(f"recfast bench: {f} failed", file=sys.stderr)
    return 1 if failed else 0


# -- parser ---------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recfast", description="recfast: train, evaluate and benchmark recommenders.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run 'recfast <command> -h' for a command's options.")
    p.add_argument("--version", action="store_true", help="print the version and build information")
    sub = p.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train a model (default: LightGCN on built-in synthetic data) and print metrics",
                       description="Train a model from a YAML config and/or flags; flags override the config.")
    t.add_argument("config", nargs="?", help="a YAML config file")
    t.add_argument("--config", dest="config_opt", metavar="FILE", help="the YAML config file (same as positional)")
    t.add_argument("--model", help="a registered model name (default LightGCN)")
    t.add_argument("--params", help="model parameters as a JSON/YAML mapping, e.g. '{\"dim\": 64}'")
    t.add_argument("--data", help="'synthetic', a RecBole .inter file, a .csv/.tsv file, or a folder of "
                                  "train/valid/test.txt")
    t.add_argument("--synthetic", metavar="UxIxN", help="users x items x interactions of the synthetic set "
                                                        "(default 2000x1000x40000)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--optimizer")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    t.add_argument("--early-stopping", nargs="?", const="ndcg@20", metavar="METRIC",
                   help="stop when this validation metric (default ndcg@20) stops improving for 3 evaluations")
    t.add_argument("--resume", action="store_true", help="continue from the output folder's checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--out", help=f"output folder (default {DEFAULT_OUT}/<model>)")
    t.add_argument("--custom-module", action="append", metavar="PATH", help="a .py file or package defining models")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. trainer.lr=0.01")

    e = sub.add_parser("evaluate", help="evaluate a saved model on a split")
    e.add_argument("run", help="an output folder of recfast train (or a model.pt file)")
    e.add_argument("--config", help="the config that describes the data (default: the run's config.yaml)")
    e.add_argument("--split", choices=("test", "valid"), default="test")
    e.add_argument("--device", default=None)
    e.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. evaluator.ks=[5]")
    e.add_argument("--out", help="write the metrics as JSON here")

    r = sub.add_parser("recommend", help="top-k items for users, as CSV or JSON with the original ids")
    r.add_argument("run", help="an output folder of recfast train (or a model.pt file)")
    r.add_argument("--users", nargs="+", help="user ids (original ids; commas or spaces)")
    r.add_argument("--users-file", help="a file with one user id per line")
    r.add_argument("--all-users", action="store_true")
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--format", choices=("csv", "json"), default="csv")
    r.add_argument("--output", help="output file (default: standard output)")
    r.add_argument("--include-seen", action="store_true", help="allow training items in the lists")
    r.add_argument("--config", help="the run's config (for custom_modules; default: the run's config.yaml)")

    b = sub.add_parser("bench", help="run the benchmark scripts (--quick) and print their speedups")
    b.add_argument("--bench-dir", help="the folder with bench_*.py (default: ./benchmarks or beside the package)")
    b.add_argument("--only", help="comma-separated names, e.g. topk,bpr")
    b.add_argument("--full", action="store_true", help="full sizes instead of --quick")
    b.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    b.add_argument("--timeout", type=float, default=1800, help="seconds per script")
    b.add_argument("--out", help="combined JSON (default bench_results.json; a .png chart beside it)")
    return p


def _one_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, (FileNotFoundError, NotADirectoryError)) and e.filename and str(e.filename) not in str(msg):
        msg = f"{msg}: {e.filename}"
    return " ".join(str(msg).split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recfast`` command; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    if args.version:
        import recfast

        print(f"recfast {recfast.__version__} {json.dumps(recfast.build_info())}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    handler = {"train": _cmd_train, "evaluate": _cmd_evaluate, "recommend": _cmd_recommend, "bench": _cmd_bench}
    try:
        return handler[args.command](args)
    except KeyboardInterrupt:
        print("recfast: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        import yaml

        from .config import ConfigError

        expected = (ConfigError, UsageError, ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError,
                    yaml.YAMLError, json.JSONDecodeError)
        if not isinstance(e, expected) or os.environ.get("RECFAST_TRACEBACK"):
            raise
        print(f"recfast {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
