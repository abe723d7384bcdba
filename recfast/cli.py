"""The ``recfast`` command.

``recfast train`` with no arguments trains LightGCN on a built-in synthetic dataset and prints its
metrics; flags choose the model, data and training settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence


def _data(args: argparse.Namespace):
    from . import data

    if args.data == "synthetic":
        n_users, n_items, n = (int(v) for v in args.synthetic.split("x"))
        x = data.synthetic(n_users, n_items, n, seed=args.seed)
        train, valid, test = data.stratified_split(x, (0.8, 0.1, 0.1), seed=args.seed)
        return train, valid, test
    path = Path(args.data)
    if path.is_dir():
        return data.load_split_dataset(path)
    x = data.load_atomic(path) if path.suffix == ".inter" else data.load_csv(path)
    return data.stratified_split(x, (0.8, 0.1, 0.1), seed=args.seed)


def _train(args: argparse.Namespace) -> int:
    import recfast

    t0 = time.perf_counter()
    train, valid, test = _data(args)
    params = json.loads(args.params) if args.params else {}
    model = recfast.build_model(args.model, params, n_users=train.n_users, n_items=train.n_items)
    print(f"recfast {recfast.__version__}: {args.model} on {args.data} "
          f"({train.n_users} users, {train.n_items} items, {len(train)} training interactions)")
    trainer = recfast.Trainer(model, train, valid, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                              optimizer=args.optimizer, seed=args.seed, device=args.device, ks=(10, 20),
                              early_stopping={"metric": "ndcg@20", "patience": 3} if args.early_stopping else None,
                              log_dir=args.out, checkpoint_dir=args.out)
    for rec in trainer.fit():
        extra = f"  loss {rec['loss']:.4f}  {rec['samples_per_s'] / 1e3:8.1f}k samples/s" if "loss" in rec else ""
        print(f"epoch {rec['epoch']:3d}{extra}  valid recall@20 {rec.get('recall@20', float('nan')):.4f}  "
              f"ndcg@20 {rec.get('ndcg@20', float('nan')):.4f}")
    metrics = trainer.evaluate(test)
    print("\ntest metrics")
    for name in sorted(metrics):
        print(f"  {name:<14} {metrics[name]:.4f}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        model.save(Path(args.out) / "model.pt")
        (Path(args.out) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(f"\nsaved model and metrics to {args.out}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recfast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model and print its metrics")
    t.add_argument("--model", default="LightGCN", help="a registered model name (default LightGCN)")
    t.add_argument("--params", default=None, help='model parameters as JSON, e.g. \'{"dim": 64}\'')
    t.add_argument("--data", default="synthetic",
                   help="'synthetic', a RecBole .inter file, a CSV file, or a folder of train/valid/test.txt")
    t.add_argument("--synthetic", default="2000x1000x40000", help="users x items x interactions of the synthetic set")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch-size", type=int, default=2048)
    t.add_argument("--lr", type=float, default=1e-2)
    t.add_argument("--optimizer", default="adam")
    t.add_argument("--early-stopping", action="store_true", help="stop when valid ndcg@20 stops improving")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--out", default=None, help="folder for the checkpoint, log, model and metrics")
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
    except (ValueError, TypeError, KeyError, FileNotFoundError, json.JSONDecodeError) as e:
        print(f"recfast: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
