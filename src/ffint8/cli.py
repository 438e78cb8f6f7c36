"""The command line: `ffint8 train` and `ffint8 eval`. User errors print one line, exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ffint8 import __version__
from ffint8.data import DATASETS
from ffint8.devices import DEVICE_FORMS
from ffint8.errors import ConfigError, DivergenceError, FFInt8Error
from ffint8.quant.gemm import KERNELS
from ffint8.train.config import (
    ALGOS,
    GOODNESS,
    LOOK_AHEAD,
    LOSSES,
    LR_SCHEDULES,
    NEGATIVES,
    NORMS,
    OPTIMIZERS,
    PREDICT,
    PREDICT_UNITS,
    PRESETS,
    RESUME_MAY_CHANGE,
    SCHEDULES,
    FFConfig,
    TrainConfig,
    resume_may_change_flags,
)


def _int_list(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none"):
        return ()  # no hidden layer (backprop: a linear classifier)
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# Config fields whose flag's destination is spelled otherwise (--weight-per-channel).
_FIELD_TO_DEST = {"weight_channel": "weight_per_channel"}


def _as_dests(fields: dict) -> dict:
    """A {config field: value} dict keyed by the flags' destinations instead."""
    return {_FIELD_TO_DEST.get(k, k): v for k, v in fields.items()}


def config_file_keys() -> dict:
    """Options a --config file may set: the config fields, spelled as the flags' destinations."""
    from ffint8.configfile import default_valid_keys

    return {**_as_dests(default_valid_keys()), "out": str, "tensorboard": bool,
            "no_progress": bool}


def _expect_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model", default=None, help="fail unless the checkpoint holds this model")
    sp.add_argument("--algo", default=None, help="fail unless it was trained with this algorithm")


def build_parser(train_defaults: dict | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ffint8", description=__doc__)
    p.add_argument("--version", action="version", version=f"ffint8 {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (FF-INT8 MLP on Fashion-MNIST by default)")
    d = TrainConfig()
    f = FFConfig()
    g = t.add_argument_group("model and data")
    g.add_argument("--model", default=d.model, help="registered model name (default %(default)s)")
    g.add_argument("--hidden", type=_int_list, default=d.hidden,
                   help="MLP hidden widths, comma-separated (default 1000,1000; "
                        "none: no hidden layer, backprop only)")
    g.add_argument("--width", type=float, default=d.width,
                   help="CNNs: channel width multiplier (default %(default)s)")
    g.add_argument("--label-plane", action="store_true",
                   help="CNNs: also feed the label as constant input channels")
    g.add_argument("--dataset", default=d.dataset, help=f"one of {', '.join(DATASETS)}")
    g.add_argument("--data-dir", default=None, help="directory with the data set's files")
    g.add_argument("--limit-train", type=int, default=None, help="use the first N training samples")
    g.add_argument("--limit-test", type=int, default=None, help="use the first N test samples")
    g = t.add_argument_group("algorithm")
    g.add_argument("--algo", default=f.algo, help=f"one of {', '.join(ALGOS)}")
    g.add_argument("--look-ahead", default=f.look_ahead, help=f"one of {', '.join(LOOK_AHEAD)}")
    g.add_argument("--chain-depth", type=int, default=None, help="chain: later units that feed back")
    g.add_argument("--lambda-start", type=float, default=f.lambda_start)
    g.add_argument("--lambda-step", type=float, default=f.lambda_step, help="added every epoch")
    g.add_argument("--lambda-max", type=float, default=f.lambda_max,
                   help="where lambda stops rising (default: it never stops)")
    g.add_argument("--goodness", default=f.goodness, help=f"one of {', '.join(GOODNESS)}")
    g.add_argument("--theta", type=float, default=f.theta)
    g.add_argument("--loss", default=f.loss, help=f"one of {', '.join(LOSSES)} (symba: on G_pos - G_neg)")
    g.add_argument("--symba-alpha", type=float, default=f.symba_alpha)
    g.add_argument("--peer-weight", type=float, default=f.peer_weight,
                   help="peer normalisation weight in every unit's loss (default %(default)s; 0: off)")
    g.add_argument("--norm", default=f.norm, help=f"one of {', '.join(NORMS)}")
    g.add_argument("--schedule", default=f.schedule, help=f"one of {', '.join(SCHEDULES)}")
    g.add_argument("--int8-kernel", default=f.int8_kernel, help=f"one of {', '.join(KERNELS)}")
    g.add_argument("--weight-per-channel", action="store_true", help="one weight scale per unit")
    g.add_argument("--predict", default=f.predict,
                   help=f"one of {', '.join(PREDICT)} (softmax: a readout on one neutral-label pass)")
    g.add_argument("--predict-units", default=f.predict_units,
                   help=f"one of {', '.join(PREDICT_UNITS)}: the units whose goodness prediction "
                        "sums (skip-first: all but the first; auto, the default: at every "
                        "evaluation whichever of the two labels up to 5000 training images better)")
    g.add_argument("--negatives", default=f.negatives,
                   help=f"one of {', '.join(NEGATIVES)} (hard: wrong labels the model now prefers)")
    g = t.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help=f"default {d.epochs}")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--optimizer", default=d.optimizer,
                   help=f"one of {', '.join(OPTIMIZERS)} (adam8: Adam with its two moments "
                        "stored in 8 bits, a quarter of Adam's state memory; adamw: Adam with "
                        "--weight-decay decoupled from the gradient)")
    g.add_argument("--lr-schedule", default=d.lr_schedule,
                   help=f"one of {', '.join(LR_SCHEDULES)} (cooldown: linear to 0 in the 2nd half)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    g.add_argument("--flush-denormals", action=argparse.BooleanOptionalAction,
                   default=d.flush_denormals,
                   help="flush float32 denormals to zero on the CPU (default on: values below "
                        "2^-126, which training makes, slow some CPUs down many times)")
    g.add_argument("--device", default=d.device,
                   help=f"where to compute: {DEVICE_FORMS} (auto: the GPU where one is usable; "
                        "default %(default)s)")
    g.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="score the test set after every N-th epoch and after the last (default 1)")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size,
                   help="images scored at a time when evaluating (FF goodness prediction runs "
                        "one row per image and label; default %(default)s)")
    g.add_argument("--norm-batches", type=int, default=d.norm_batches,
                   help="FF CNNs: before each evaluation, re-estimate the batch norms' running "
                        "statistics over N training batches with the weights fixed (0: keep "
                        "training's moving averages; default %(default)s)")
    g = t.add_argument_group("output")
    g.add_argument("--out", default="runs/latest", help="run directory (default %(default)s)")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it is off anyway when stderr is not a terminal)")
    g.add_argument("--tensorboard", action="store_true",
                   help="also log to DIR/tensorboard (needs the tensorboard package)")
    g.add_argument("--preset", default=None,
                   help=f"named settings under --config and flags: {', '.join(PRESETS)} "
                        "(paper: the FF-INT8 paper's own configuration)")
    g.add_argument("--config", metavar="FILE", default=None,
                   help="YAML or TOML file of option defaults; flags given here override it")
    g.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run in DIR from its last finished epoch, with its config "
                        f"(only {resume_may_change_flags()} may change)")
    g = t.add_argument_group("distributed (one process per rank: torchrun --nproc-per-node N -m "
                             "ffint8 train --distributed ...; see docs/distributed.md)")
    g.add_argument("--distributed", nargs="?", const="data", default=None, metavar="data|pipeline",
                   help="data (the default): every rank trains on its share of each batch, "
                        "effective batch = --batch-size x ranks; pipeline: rank r trains unit r")
    g.add_argument("--grad-int8", action="store_true",
                   help="data-parallel: exchange gradients as int8 (stochastic rounding, int32 sums)")

    if train_defaults:
        t.set_defaults(**train_defaults)

    e = sub.add_parser("eval", help="test accuracy of a saved model")
    e.add_argument("--checkpoint", required=True, help="a model.pt written by `ffint8 train`")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--dataset", default=None, help="default: the one it was trained on")
    e.add_argument("--limit-test", type=int, default=None)
    e.add_argument("--device", default="cpu", help=f"where to compute: {DEVICE_FORMS} (default cpu)")
    e.add_argument("--predict-units", default=None,
                   help="FF goodness prediction: score with these units instead of the ones the "
                        "model was trained to predict with (all, skip-first, or auto: chosen on "
                        "the data set's training images)")
    _expect_flags(e)

    pr = sub.add_parser("predict", help="label PNG or JPEG images with a saved model")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--invert", action="store_true",
                    help="flip dark-on-light photos to the data set's light-on-dark")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    _expect_flags(pr)

    x = sub.add_parser("export", help="export a saved model's inference graph")
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--format", default="onnx", help="onnx (the only format so far)")
    x.add_argument("--out", default=None, help="output file (default: beside the checkpoint)")
    _expect_flags(x)

    sub.add_parser("info", help="versions, CPU int8 support, kernels, GPUs, energy meters")
    from ffint8.bench import add_bench_parser

    add_bench_parser(sub)
    from ffint8.fleet.cli import add_fleet_parser

    add_fleet_parser(sub)
    return p


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed train options give: every config field from its flag's
    destination, so that no field (set on the line or in a --config file) can be left out."""

    def given(cls) -> dict:
        return {f.name: getattr(a, _FIELD_TO_DEST.get(f.name, f.name))
                for f in dataclasses.fields(cls) if f.name != "ff"}

    train = given(TrainConfig)
    if train["epochs"] is None:  # --epochs unset (a resumed run keeps its own)
        train["epochs"] = TrainConfig.epochs
    return TrainConfig(**train, ff=FFConfig(**given(FFConfig)))


def _layered_defaults(args: argparse.Namespace) -> dict:
    """The train defaults that --preset and then --config set (a ConfigError when bad)."""
    defaults = {}
    if args.preset:
        if args.preset not in PRESETS:
            raise ConfigError(f"invalid --preset {args.preset!r}; choose one of: "
                              f"{', '.join(PRESETS)}")
        defaults.update(PRESETS[args.preset])
    if args.config:
        from ffint8.configfile import load_config_file

        defaults.update(load_config_file(args.config, config_file_keys()))
    if "hidden" in defaults:
        defaults["hidden"] = tuple(defaults["hidden"])
    return defaults


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; for train, defaults come from built-ins < --preset < --config <
    flags. A bad preset or config file is a ConfigError."""
    args = build_parser().parse_args(argv)
    if args.command == "train" and (args.config or args.preset):
        args = build_parser(_layered_defaults(args)).parse_args(argv)
    return args


# What a resumed run may be given beside --resume: none of it changes what is trained.
_RESUME_FREE = frozenset({"command", "resume", *RESUME_MAY_CHANGE, "no_progress", "tensorboard",
                          "distributed", "grad_int8"})


def _given_train_options(args: argparse.Namespace, argv: list[str], layered: bool = True) -> set[str]:
    """The destinations of the train options that argv sets on the line (and, with layered,
    through --preset or --config) rather than leaving them at the built-in defaults."""
    unset = object()
    dests = vars(build_parser().parse_args(["train"]))
    probe = build_parser({k: unset for k in dests if k != "command"}).parse_args(argv)
    given = {k for k, v in vars(probe).items() if v is not unset}
    return given | set(_layered_defaults(args)) if layered else given


def check_model_options(args: argparse.Namespace, argv: list[str]) -> None:
    """A ConfigError for a model option on the line that the chosen model does not take
    (--hidden for a CNN, --width or --label-plane for the MLP), rather than ignoring it."""
    from ffint8.models import model_options

    takes = model_options(args.model)
    wrong = [k for k in ("hidden", "width", "label_plane")
             if k in _given_train_options(args, argv, layered=False) and k not in takes]
    if wrong:
        flag = lambda k: "--" + k.replace("_", "-")  # noqa: E731
        have = [flag(k) for k in ("hidden", "width", "label_plane") if k in takes]
        raise ConfigError(f"{', '.join(map(flag, wrong))}: model {args.model} does not take "
                          f"{'it' if len(wrong) == 1 else 'them'}; its shape options are "
                          f"{', '.join(have) or 'none'}")


def check_resume_options(args: argparse.Namespace, given: set[str], saved: TrainConfig) -> None:
    """A ConfigError naming every option given with --resume (given: _given_train_options) that
    differs from the run's own configuration; repeating the run's first command line with
    --resume added is fine."""
    def flat(cfg: TrainConfig) -> dict:
        d = cfg.to_dict()
        d.update(d.pop("ff"))
        return _as_dests(d)

    asked, have = flat(config_from_args(args)), flat(saved)
    differ = []
    for key in sorted(given - _RESUME_FREE):
        if key == "out":
            if Path(args.out).resolve() != Path(args.resume).resolve():
                differ.append(f"--out {args.out} (the run is {args.resume})")
        elif key in have and asked[key] != have[key]:
            differ.append(f"--{key.replace('_', '-')} {_shown(asked[key])} "
                          f"(the run has {_shown(have[key])})")
    if differ:
        raise ConfigError(f"--resume {args.resume}: a resumed run keeps the configuration it was "
                          f"started with (only {resume_may_change_flags()} may change), but "
                          f"{'; '.join(differ)}; drop those options, or start a new run with its "
                          "own --out")


def _shown(value) -> str:
    if value is None:
        return "unset"
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.command in ("eval", "predict", "export") and (args.model or args.algo):
            from ffint8.train.run import expect_checkpoint

            expect_checkpoint(args.checkpoint, args.model, args.algo)
        if args.command == "train":
            from ffint8.train.run import resume_config, run_training

            line = sys.argv[1:] if argv is None else argv
            if args.resume:
                given = _given_train_options(args, line)
                changes = {k: getattr(args, k) for k in RESUME_MAY_CHANGE if k in given}
                cfg = resume_config(args.resume, changes,
                                    check=lambda saved: check_resume_options(args, given, saved))
                args.out = args.resume
            else:
                check_model_options(args, line)
                cfg = config_from_args(args)
            if args.distributed:
                from ffint8.dist.launch import run_distributed

                m = run_distributed(args.distributed, cfg, args.out, args.grad_int8,
                                    not args.no_progress, bool(args.resume), args.tensorboard)
                if m is None:  # not rank 0
                    return 0
            elif args.grad_int8:
                raise ConfigError("--grad-int8 needs --distributed data")
            else:
                m = run_training(cfg, args.out, progress=not args.no_progress,
                                 resume=bool(args.resume), tensorboard=args.tensorboard)
            print(f"test accuracy {100 * m['test_accuracy']:.2f}%, training "
                  f"{m['train_seconds']:.1f}s; wrote {args.out}/metrics.json and model.pt")
        elif args.command == "eval":
            from ffint8.train.run import evaluate_checkpoint

            print(json.dumps(evaluate_checkpoint(args.checkpoint, args.data_dir, args.dataset,
                                                 args.limit_test, args.predict_units,
                                                 device=args.device), indent=2))
        elif args.command == "predict":
            from ffint8.infer import predict_files

            for r in predict_files(args.checkpoint, args.images, invert=args.invert):
                name = f" ({r['name']})" if "name" in r else ""
                scores = " ".join(f"{v:.3f}" for v in r["scores"])
                print(f"{r['path']}: label {r['label']}{name}  scores {scores}")
        elif args.command == "export":
            if args.format != "onnx":
                raise ConfigError(f"invalid --format {args.format!r}; choose one of: onnx")
            from ffint8.export import export_onnx

            out = args.out or str(Path(args.checkpoint).with_suffix(".onnx"))
            print(f"wrote {export_onnx(args.checkpoint, out)}")
        elif args.command == "info":
            from ffint8.info import collect_info, format_info

            print(format_info(collect_info()))
        elif args.command == "bench":
            from ffint8.bench import run_bench

            return run_bench(args)
        elif args.command == "fleet":
            from ffint8.fleet.cli import run_fleet

            return run_fleet(args)
    except DivergenceError as exc:
        print(f"ffint8: error: {exc}", file=sys.stderr)
        return 3
    except FFInt8Error as exc:
        print(f"ffint8: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ffint8: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
