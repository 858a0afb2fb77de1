"""Train a network on MNIST or Fashion-MNIST on a laptop CPU (or a GPU with XPNN_BACKEND=cupy).

    python examples/mnist.py                              # embedded 5,000-image sample, 784-128-10
    python examples/mnist.py --data-dir ~/data/mnist      # full MNIST from IDX files
    python examples/mnist.py --dataset fashion-mnist --epochs 10 --plot plots/
    python examples/mnist.py --predict runs/mnist_mlp.safetensors

With no full dataset on disk (and no network), it trains on the small real MNIST sample
shipped inside xpnn and says how to get the full set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import xpnn
from xpnn import datasets, optim, schedules
from xpnn.models.mnist import PREPROCESSING, mnist_cnn, mnist_mlp
from xpnn.training import evaluate, fit, predict

FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    parser.add_argument("--data-dir", help="folder holding the four IDX files (.gz or raw)")
    parser.add_argument("--download", action="store_true",
                        help="download the full dataset if it is not found (needs network)")
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default: 0.05 for sgd, 1e-3 for adam/adamw)")
    parser.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="sgd")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument("--schedule", choices=["none", "cosine", "step"], default="cosine",
                        help="learning-rate schedule over the epochs (default: cosine)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[128],
                        help="hidden layer sizes of the MLP (default: 128)")
    parser.add_argument("--init", default="torch",
                        help="weight initializer of the MLP: torch, he_normal, glorot_uniform, ...")
    parser.add_argument("--target-accuracy", type=float, default=None,
                        help="stop once the test accuracy reaches this fraction, e.g. 0.96")
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write the trained weights here (.safetensors)")
    parser.add_argument("--checkpoint", help="write a resumable checkpoint here every epoch")
    parser.add_argument("--resume", help="continue from a checkpoint written by --checkpoint")
    parser.add_argument("--plot", help="write loss/accuracy curves, confusion matrix and "
                        "a prediction grid (PNG) into this folder")
    parser.add_argument("--predict", metavar="WEIGHTS",
                        help="classify test images with saved weights and show a few predictions")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def build_model(args):
    if args.model == "cnn":
        return mnist_cnn(seed=args.seed)
    return mnist_mlp(hidden=args.hidden, weight_init=args.init, seed=args.seed)


def build_optimizer(args, model):
    lr = args.lr if args.lr is not None else (0.05 if args.optimizer == "sgd" else 1e-3)
    if args.optimizer == "sgd":
        return optim.SGD(model.parameters(), lr=lr, momentum=args.momentum)
    if args.optimizer == "adam":
        return optim.Adam(model.parameters(), lr=lr)
    return optim.AdamW(model.parameters(), lr=lr)


def build_schedule(args, optimizer):
    if args.schedule == "cosine":
        return schedules.CosineAnnealingLR(optimizer, T_max=args.epochs)
    if args.schedule == "step":
        return schedules.StepLR(optimizer, step_size=max(1, args.epochs // 3), gamma=0.1)
    return None


def prepare(images, model):
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) as the model's ``preprocessing`` says
    (pixels / 255 for the MNIST models, which the MLP flattens)."""
    pre = getattr(model, "preprocessing", None) or PREPROCESSING
    x = datasets.normalize(images, mean=pre.get("mean"), std=pre.get("std"))
    return x.reshape(len(x), 1, 28, 28)


def run_predict(args, test, class_names) -> int:
    model = xpnn.io.load_model(args.predict)
    x_test, y_test = test
    predicted = predict(model, prepare(x_test, model))
    accuracy = float(np.mean(predicted == y_test))
    print(f"weights: {args.predict} ({model.num_parameters():,} parameters)")
    for index in range(min(10, len(y_test))):
        mark = "" if predicted[index] == y_test[index] else "   <- wrong"
        print(f"  image {index}: predicted {class_names[predicted[index]]:<12} "
              f"true {class_names[y_test[index]]}{mark}")
    print(f"test accuracy: {accuracy:.2%} on {len(y_test):,} images")
    if args.plot:
        from xpnn import plots

        path = plots.plot_predictions(x_test, y_test, predicted,
                                      Path(args.plot) / "predictions.png", class_names)
        print(f"prediction grid: {path}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    backend = xpnn.backends.current()
    print(f"backend: {backend.name} (device {backend.device})")
    data = datasets.load_dataset(args.dataset, data_dir=args.data_dir, download=args.download)
    (x_train, y_train), (x_test, y_test), source = data
    print(f"data: {source}")
    if data.name == "mnist-sample" and args.dataset != "mnist-sample":
        print("      (with this script: --data-dir DIR, or --download on a machine with network)")
    class_names = FASHION_NAMES if args.dataset == "fashion-mnist" else [str(i) for i in range(10)]
    if args.predict:
        return run_predict(args, (x_test, y_test), class_names)

    model = build_model(args)
    optimizer = build_optimizer(args, model)
    initial_lr = optimizer.lr
    schedule = build_schedule(args, optimizer)
    print(f"model: {model!r}".replace("\n", "\n  "))
    print(f"{model.num_parameters():,} parameters; {args.optimizer} lr={optimizer.lr}, "
          f"batch {args.batch_size}, up to {args.epochs} epochs on {len(x_train):,} images")

    train = (prepare(x_train, model), y_train)
    test = (prepare(x_test, model), y_test)
    started = time.perf_counter()
    history = fit(model, train, test, optimizer=optimizer, epochs=args.epochs,
                  batch_size=args.batch_size, seed=args.seed, schedule=schedule,
                  target_accuracy=args.target_accuracy, patience=args.patience,
                  checkpoint=args.checkpoint, resume=args.resume,
                  progress=False if args.quiet else None)
    seconds = time.perf_counter() - started
    if history.stopped_because:
        print(f"stopped early: {history.stopped_because}")
    test_loss, test_accuracy = evaluate(model, *test)
    print(f"test accuracy: {test_accuracy:.2%} (loss {test_loss:.4f}) after "
          f"{len(history.epochs)} epochs, {seconds:.1f} s")

    if args.save:  # the architecture and preprocessing are recorded by xpnn.io.save
        how_trained = {
            "dataset": args.dataset, "epochs": str(len(history.epochs)),
            "data": f"{args.dataset}: {len(x_train):,} training / {len(x_test):,} test images"
                    + (" (embedded sample)" if "embedded" in source else ""),
            "test_accuracy": f"{test_accuracy:.4f}", "optimizer": args.optimizer,
            "lr": str(initial_lr), "momentum": str(args.momentum), "schedule": args.schedule,
            "batch_size": str(args.batch_size), "seed": str(args.seed),
        }
        xpnn.io.save(model, args.save, metadata=how_trained)
        print(f"weights: {args.save}")
    if args.plot:
        from xpnn import plots

        folder = Path(args.plot)
        predicted = predict(model, test[0])
        paths = [
            plots.plot_history(history, folder / "history.png"),
            plots.plot_confusion_matrix(y_test, predicted, folder / "confusion_matrix.png",
                                        class_names),
            plots.plot_predictions(x_test, y_test, predicted, folder / "predictions.png",
                                   class_names),
        ]
        print("plots: " + ", ".join(str(path) for path in paths))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except xpnn.XpnnError as error:  # bad data, weights, arguments; a NaN loss
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # e.g. a plot folder that cannot be written
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # fit has already saved a checkpoint if one was asked for
        print("interrupted", file=sys.stderr)
        sys.exit(130)
