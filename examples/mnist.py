"""Train a network on MNIST or Fashion-MNIST on a laptop CPU (or a GPU with XPNN_BACKEND=cupy).

    python examples/mnist.py                              # embedded 5,000-image sample, 784-128-10
    python examples/mnist.py --data-dir ~/data/mnist      # full MNIST from IDX files
    python examples/mnist.py --dataset fashion-mnist --epochs 10 --plot plots/
    python examples/mnist.py --predict runs/mnist_mlp.safetensors
    mpiexec -n 2 python examples/mnist.py --batch-size 32   # data-parallel: global batch 64

Run with no data flags, it uses full MNIST from xpnn's cache folder when present, else the
small real MNIST sample shipped inside xpnn, and says how to get the full set. A data
folder asked for explicitly (--data-dir, XPNN_DATA or --download) that does not hold the
dataset is an error, never a silent fallback. Flags and output paths are checked before any
data is loaded.

Started by ``mpiexec -n N`` (or ``srun``), it trains data-parallel (needs
``pip install "xpnn[distributed]"``): ``--batch-size`` is per rank, rank 0 alone prints and
writes files, and each rank's BLAS gets its share of the cores unless OMP_NUM_THREADS is set.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path


def _share_cores_between_ranks() -> None:
    """Several ranks on one machine, each with a BLAS thread per core, would oversubscribe
    the CPU: give each rank its share, unless the user chose (OMP_NUM_THREADS set). Runs
    before NumPy is imported, as BLAS reads these variables when it loads."""
    local = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
    if not (local or "").isdigit() or int(local) < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    threads = str(max(1, (os.cpu_count() or 1) // int(local)))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, threads)


_share_cores_between_ranks()

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # examples/_cli.py, when imported

import _cli  # noqa: E402

import xpnn  # noqa: E402
from xpnn import datasets, optim, schedules  # noqa: E402
from xpnn.errors import DataNotFoundError, XpnnError  # noqa: E402
from xpnn.init import INITIALIZERS  # noqa: E402
from xpnn.models.mnist import PREPROCESSING, mnist_cnn, mnist_mlp  # noqa: E402
from xpnn.training import evaluate, fit, predict  # noqa: E402

CHECKPOINT_KIND = "xpnn-checkpoint"  # the "kind" metadata of fit(checkpoint=...) files
DATA_FLAGS_HELP = ("give the folder holding the four IDX files with --data-dir DIR (or "
                   "XPNN_DATA=DIR), or add --download on a machine with network; run "
                   "without --data-dir, XPNN_DATA and --download to train on the embedded "
                   "sample")

FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=_cli.HelpFormatter)
    parser.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist",
                        help="which dataset")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="folder holding the four IDX files (.gz or raw); if given, it must "
                        "hold them (no fallback to the embedded sample)")
    parser.add_argument("--download", action="store_true",
                        help="download the full dataset if it is not found (needs network)")
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp",
                        help="the network: 784-128-10 MLP or a small CNN")
    parser.add_argument("--epochs", type=_cli.integer(1, 10_000), default=10,
                        metavar="N", help="training epochs (1 to 10,000)")
    parser.add_argument("--batch-size", type=_cli.integer(1, 65_536), default=32,
                        metavar="N", help="images per training batch (1 to 65,536)")
    parser.add_argument("--lr", type=_cli.number(0, 10, low_open=True), default=None,
                        metavar="LR",
                        help="learning rate, > 0 and <= 10 (None: 0.05 for sgd, 1e-3 "
                        "for adam/adamw)")
    parser.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="sgd",
                        help="optimizer")
    parser.add_argument("--momentum", type=_cli.number(0, 1, high_open=True), default=0.9,
                        metavar="M", help="SGD momentum, >= 0 and < 1")
    parser.add_argument("--schedule", choices=["none", "cosine", "step"], default="cosine",
                        help="learning-rate schedule over the epochs")
    parser.add_argument("--hidden", type=_cli.integer(1, 16_384), nargs="+", default=[128],
                        metavar="N", help="hidden layer sizes of the MLP (1 to 16,384 each)")
    parser.add_argument("--init", default="torch", choices=list(INITIALIZERS),
                        help="weight initializer of the MLP")
    parser.add_argument("--target-accuracy", type=_cli.number(0, 1, low_open=True),
                        default=None,
                        metavar="FRACTION",
                        help="stop once the test accuracy reaches this fraction, e.g. 0.96")
    parser.add_argument("--patience", type=_cli.integer(1, 10_000), default=None,
                        metavar="EPOCHS",
                        help="stop after this many epochs without a better test loss")
    parser.add_argument("--restore-best", action="store_true",
                        help="end with the weights of the epoch with the best test loss "
                        "(needs an xpnn whose fit has restore_best=)")
    parser.add_argument("--seed", type=_cli.integer(0, 2**32 - 1), default=0,
                        help="seed of the initial weights and the batch order (0 to 2**32-1)")
    parser.add_argument("--save", metavar="PATH",
                        help="write the trained weights here (.safetensors)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="write a resumable checkpoint here every epoch "
                        "and on Ctrl-C")
    parser.add_argument("--resume", metavar="PATH",
                        help="continue from a checkpoint written by --checkpoint")
    parser.add_argument("--plot", metavar="FOLDER",
                        help="write loss/accuracy curves, confusion matrix and "
                        "a prediction grid (PNG) into this folder (needs matplotlib)")
    parser.add_argument("--predict", metavar="WEIGHTS",
                        help="classify test images with saved weights (or a --checkpoint "
                        "file) and show one prediction per class")
    parser.add_argument("--precision", default="float32",
                        choices=["float32", "mixed_float16", "mixed_bfloat16"],
                        help="training steps in half precision with float32 master weights "
                        "and loss scaling (xpnn.mixed_precision)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.predict and (args.resume or args.checkpoint or args.save):
        parser.error("--predict classifies with saved weights and trains nothing; it "
                     "expected no --resume, --checkpoint or --save. Received: "
                     + ", ".join(flag for flag, value in (("--resume", args.resume),
                                 ("--checkpoint", args.checkpoint), ("--save", args.save))
                                 if value))
    return args


def path_problems(args) -> list[str]:
    """Everything wrong with the paths given, found before any data is loaded."""
    problems = [
        _cli.output_file_problem("--save", args.save) if args.save else None,
        _cli.output_file_problem("--checkpoint", args.checkpoint) if args.checkpoint else None,
        _cli.input_file_problem("--resume", args.resume) if args.resume else None,
        _cli.input_file_problem("--predict", args.predict) if args.predict else None,
    ]
    if args.plot:
        problems += [_cli.output_folder_problem("--plot", args.plot),
                     _cli.matplotlib_problem("--plot")]
    if args.data_dir is not None:
        folder = Path(args.data_dir).expanduser()
        if folder.exists() and not folder.is_dir():
            problems.append(f"--data-dir expected a folder holding the four IDX files. "
                            f"Received: {args.data_dir!r}, which is a file.")
    return [problem for problem in problems if problem]


def data_asked_for(args) -> list[str]:
    """The data flags the user gave explicitly (no fallback to the sample then)."""
    given = []
    if args.data_dir is not None:
        given.append(f"--data-dir {args.data_dir}")
    if os.environ.get("XPNN_DATA"):
        given.append(f"XPNN_DATA={os.environ['XPNN_DATA']}")
    if args.download:
        given.append("--download")
    return given


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


def read_checkpoint_metadata(path) -> dict | None:
    """The metadata of a training checkpoint written by ``fit(checkpoint=...)``, or None
    when ``path`` is another kind of file."""
    metadata = xpnn.io.load_metadata(path)
    return metadata if metadata.get("kind") == CHECKPOINT_KIND else None


def checkpoint_position(metadata: dict) -> tuple[int, int]:
    """(completed epochs, batches of the next epoch already trained) of a checkpoint."""
    try:
        position = json.loads(metadata.get("position", "{}"))
        return int(position.get("epoch", 0)), int(position.get("batches_done", 0))
    except (ValueError, TypeError, AttributeError):
        return 0, 0  # fit's own checks say what is wrong with it


def model_from_checkpoint(path, metadata: dict):
    """The model stored in a training checkpoint (its architecture record and the
    ``model.*`` tensors)."""
    try:
        record = json.loads(metadata["architecture"])
    except (KeyError, ValueError) as error:
        raise xpnn.errors.WeightsError(
            f"{path} is a training checkpoint without a readable architecture record "
            f"({error}). Resume it with --resume {path} instead.") from None
    model = xpnn.io.model_from_config(record, max_values=xpnn.io.stored_values(path))
    arrays = xpnn.io.read_arrays(path, check_finite=True)
    model.load_state_dict({name[len("model."):]: value for name, value in arrays.items()
                           if name.startswith("model.")})
    return model


def shown_indices(labels: np.ndarray, seed: int, count: int = 10) -> list[int]:
    """``count`` test images to print: one random image of each class present (seeded),
    so a sorted test set does not show ten images of one class."""
    rng = np.random.default_rng(seed)
    chosen = [int(rng.choice(np.flatnonzero(labels == label)))
              for label in np.unique(labels)[:count]]
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    extra = rng.choice(rest, size=min(count - len(chosen), len(rest)), replace=False)
    return sorted(chosen + [int(i) for i in extra])


def run_predict(args, test, class_names, from_sample: bool) -> int:
    metadata = read_checkpoint_metadata(args.predict)
    if metadata is not None:
        epochs, batches = checkpoint_position(metadata)
        model = model_from_checkpoint(args.predict, metadata)
        print(f"{args.predict} is a training checkpoint (written by --checkpoint after "
              f"{epochs} epochs and {batches} batches), not a --save file: predicting with "
              f"the model weights it holds. Continue training it with --resume "
              f"{args.predict}; write a weights file with --save PATH when training ends.")
    else:
        model = xpnn.io.load_model(args.predict)
    x_test, y_test = test
    predicted = predict(model, prepare(x_test, model))
    accuracy = float(np.mean(predicted == y_test))
    print(f"weights: {args.predict} ({model.num_parameters():,} parameters)")
    for index in shown_indices(y_test, args.seed):
        mark = "" if predicted[index] == y_test[index] else "   <- wrong"
        print(f"  image {index}: predicted {class_names[predicted[index]]:<12} "
              f"true {class_names[y_test[index]]}{mark}")
    where = (" of the embedded sample (taken from MNIST's training split: a model trained "
             "on full MNIST has seen them, so this overstates its test accuracy)"
             if from_sample else "")
    print(f"test accuracy: {accuracy:.2%} on {len(y_test):,} images{where}")
    if args.plot:
        from xpnn import plots

        path = plots.plot_predictions(x_test, y_test, predicted,
                                      Path(args.plot) / "predictions.png", class_names)
        print(f"prediction grid: {path}")
    return 0


def fit_options(args) -> dict:
    """Keyword arguments of fit this xpnn may or may not have (``restore_best``)."""
    if args.restore_best:
        if "restore_best" not in inspect.signature(fit).parameters:
            print("note: this xpnn's fit has no restore_best=; --restore-best is ignored "
                  "(the weights of the last epoch are kept)", file=sys.stderr)
            return {}
        return {"restore_best": True}
    return {}


def report_resume(args, epochs_done: int) -> None:
    """Say when the checkpoint has nothing left to train (fit itself prints "resumed at
    epoch E, batch B")."""
    if epochs_done >= args.epochs:
        print(f"note: the checkpoint has already completed {epochs_done} epochs, so "
              f"--epochs {args.epochs} trains nothing more; raise --epochs to continue")


def interrupted(args, argv: list[str], comm=None) -> int:
    """After Ctrl-C: the exact command that continues the run (fit saved the checkpoint)."""
    if comm is not None and comm.rank != 0:
        return 130  # every rank stopped at the same batch; rank 0 says how to go on
    if args.checkpoint and Path(args.checkpoint).expanduser().is_file():
        continued = _cli.replace_flag(argv, "--resume", args.checkpoint)
        launcher = "" if comm is None else f"mpiexec -n {comm.size} "
        print(f"interrupted; checkpoint {args.checkpoint}. Continue with:\n  "
              f"{launcher}{_cli.command_line(__file__, continued)}", file=sys.stderr)
    elif args.checkpoint:
        print(f"interrupted before a checkpoint was written to {args.checkpoint}; nothing "
              f"to resume from.", file=sys.stderr)
    else:
        print("interrupted; no checkpoint was asked for, so the run cannot be continued. "
              "Add --checkpoint PATH to be able to resume with --resume PATH.",
              file=sys.stderr)
    return 130


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    problems = path_problems(args)
    if problems:
        for problem in problems:
            _cli.fail(problem)
        return 2
    comm = _cli.start_ranks()
    together = True  # whether every rank ends the same way (fit's errors and stops do)
    try:
        code = run(args, argv, comm)
    except DataNotFoundError as error:
        code = _cli.fail(f"{error}\nWith this script: {DATA_FLAGS_HELP}.")
    except XpnnError as error:  # bad data, weights, a checkpoint of another run; a NaN loss
        code = _cli.fail(str(error))
    except KeyboardInterrupt as error:  # fit has already saved a checkpoint if one was asked for
        together = hasattr(error, "history")  # fit stopped every rank at the same batch
        code = interrupted(args, argv, comm)
    if comm is not None and (code not in (0, 130) or not together):
        # A rank that failed on its own would leave the others waiting in a collective.
        sys.stdout.flush()
        sys.stderr.flush()
        comm.abort(code)
    return code


def run(args, argv: list[str], comm=None) -> int:
    backend = xpnn.backends.current()
    print(f"backend: {backend.name} (device {backend.device})")
    if comm is not None:
        print(f"data-parallel: {comm.size} ranks x batch {args.batch_size} = global batch "
              f"{comm.size * args.batch_size}; {os.environ.get('OMP_NUM_THREADS', 'all')} "
              f"BLAS thread(s) per rank")
    resume_at = None
    if args.resume:
        metadata = read_checkpoint_metadata(args.resume)
        if metadata is None:
            return _cli.fail(f"--resume expected a checkpoint written by --checkpoint. "
                             f"Received: {args.resume}, which is not one (a --save file? "
                             f"use it with --predict {args.resume}).")
        resume_at, _ = checkpoint_position(metadata)
    asked = data_asked_for(args)
    data = datasets.load_dataset(args.dataset, data_dir=args.data_dir, download=args.download,
                                 fallback=not asked)
    (x_train, y_train), (x_test, y_test), source = data
    from_sample = data.name == "mnist-sample"
    print(f"data: {source}")
    if from_sample and args.dataset != "mnist-sample":
        print("      (with this script: --data-dir DIR, or --download on a machine with network)")
    class_names = FASHION_NAMES if args.dataset == "fashion-mnist" else [str(i) for i in range(10)]
    if args.predict:
        return run_predict(args, (x_test, y_test), class_names, from_sample)

    model = build_model(args)
    optimizer = build_optimizer(args, model)
    initial_lr = optimizer.lr
    schedule = build_schedule(args, optimizer)
    print(f"model: {model!r}".replace("\n", "\n  "))
    print(f"{model.num_parameters():,} parameters; {args.optimizer} lr={optimizer.lr}, "
          f"batch {args.batch_size}, up to {args.epochs} epochs on {len(x_train):,} images")
    if resume_at is not None:
        report_resume(args, resume_at)

    train = (prepare(x_train, model), y_train)
    test = (prepare(x_test, model), y_test)
    started = time.perf_counter()
    history = fit(model, train, test, optimizer=optimizer, epochs=args.epochs,
                  batch_size=args.batch_size, seed=args.seed, schedule=schedule,
                  target_accuracy=args.target_accuracy, patience=args.patience,
                  checkpoint=args.checkpoint, resume=args.resume,
                  progress=False if args.quiet else None, communicator=comm,
                  precision=args.precision,
                  **fit_options(args))
    seconds = time.perf_counter() - started
    if history.stopped_because == "interrupted":  # Ctrl-C inside an optimizer step
        raise KeyboardInterrupt
    if history.stopped_because and len(history.epochs) < args.epochs:
        print(f"stopped early: {history.stopped_because}")
    test_loss, test_accuracy = evaluate(model, *test, communicator=comm)
    print(f"test accuracy: {test_accuracy:.2%} (loss {test_loss:.4f}) after "
          f"{len(history.epochs)} epochs, {seconds:.1f} s")

    if comm is not None and comm.rank != 0:
        return 0  # rank 0 writes the weights and plots
    if args.save:  # the architecture and preprocessing are recorded by xpnn.io.save
        how_trained = {
            "dataset": args.dataset, "epochs": str(len(history.epochs)),
            "data": f"{args.dataset}: {len(x_train):,} training / {len(x_test):,} test images"
                    + (" (embedded sample)" if from_sample else ""),
            "test_accuracy": f"{test_accuracy:.4f}", "optimizer": args.optimizer,
            "lr": str(initial_lr), "momentum": str(args.momentum), "schedule": args.schedule,
            "batch_size": str(args.batch_size * (1 if comm is None else comm.size)),
            "seed": str(args.seed),
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
    except OSError as error:  # e.g. a disk that filled up while writing
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
