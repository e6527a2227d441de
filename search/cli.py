"""Command line: ``python -m search {run,status,export,validate,arch} ...``.

One small function per command and a table of commands, as in Optuna's CLI. User errors (bad study
file, unknown preset, unreachable database, ...) print one message and exit with status 1; the
traceback appears only with ``--debug``. Heavy imports (torch, ray) happen inside the commands so
``--help`` and study-file checks stay fast.
"""
from __future__ import annotations

import argparse
import os
import json
import sys
from pathlib import Path
from typing import Callable

from search.exceptions import EffnasError, UsageError

__all__ = ["main"]


# --- helpers --------------------------------------------------------------------------------------

def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


def _parse_set(items: list[str]) -> dict:
    """``--set knob=value``: values are read as YAML scalars/lists (``growth=[8,16,32]``)."""
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set {item!r}: expected knob=value, for example --set groups=4")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UsageError(f"--set {item!r}: cannot read the value {raw!r}") from None
    return out


def _study_and_storage(args) -> tuple[str | None, str]:
    """A study is named by its YAML file, or by ``--storage URL [--study NAME]``."""
    from search.config import study_location

    if args.storage:
        return args.study_name, args.storage
    if not args.study:
        raise UsageError("give a study file (STUDY.yaml) or --storage URL")
    name, url, _ = study_location(args.study)
    return name, url


# --- commands -------------------------------------------------------------------------------------

def _arch_info(name: str, classes: int | None, size: int | None, sets: list[str]) -> dict:
    """Family, data shape, costs (``space.cost.Cost``) and knobs of a preset or family, with
    ``--set`` applied. Builds the network (torch); `arch` asks the cache first."""
    from space.cost import measure
    from space.registry import get_family, get_preset, knobs_json, list_families, list_presets

    if name in list_presets():
        preset = get_preset(name)
        family, knobs = get_family(preset.family), preset.knobs
        default_classes, default_size = preset.num_classes, preset.image_size
    elif name in list_families():
        family, knobs, default_classes, default_size = get_family(name), get_family(name).default_knobs(), 10, 32
    else:
        raise UsageError(f"unknown architecture {name!r}; presets: {', '.join(list_presets())}; "
                         f"families: {', '.join(list_families())}")
    classes, size = classes or default_classes, size or default_size
    if sets:
        try:
            knobs = family.knobs_with(knobs, _parse_set(sets))
        except (ValueError, TypeError) as e:
            raise UsageError(f"--set: {e}") from None
    cost = measure(family.name, knobs, num_classes=classes, image_size=size)
    return {"name": name, "family": family.name, "num_classes": classes, "image_size": size,
            **cost.as_dict(), "knobs": knobs_json(knobs)}


def _arch_cached(name: str, classes: int | None, size: int | None, sets: list[str]) -> dict:
    """``_arch_info`` from the cache (no torch) when this code answered it before. The first miss
    of a code version also starts pricing every preset at its own classes and size, in a process
    of its own (a second or two, after this answer is out), so that any preset answers at once."""
    from search import cache

    key = [name, classes, size, sets]
    info = cache.load("arch", key)
    if info is not None:
        return info
    info = _arch_info(name, classes, size, sets)
    cache.save("arch", key, info)
    import time

    state = cache.load("arch-presets", "all")
    if cache.folder() is not None and (state is None or (state != "done" and time.time() - state > 300)):
        cache.save("arch-presets", "all", time.time())  # started (a fill that died is retried after 5 minutes)
        _start_preset_fill()
    return info


def _start_preset_fill() -> None:
    import subprocess

    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, *filter(None, [os.environ.get("PYTHONPATH")])])}
    try:
        subprocess.Popen([sys.executable, "-c", "from search.cli import fill_arch_cache; fill_arch_cache()"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=env, start_new_session=True)
    except OSError:  # the cache only saves time
        pass


def fill_arch_cache() -> None:
    """Price every preset at its own classes and size into the cache (what `arch PRESET` answers)."""
    from search import cache
    from space.registry import list_presets

    for preset in list_presets():
        if cache.load("arch", [preset, None, None, []]) is None:
            cache.save("arch", [preset, None, None, []], _arch_info(preset, None, None, []))
    cache.save("arch-presets", "all", "done")


def cmd_arch(args) -> int:
    info = _arch_cached(args.name, args.classes, args.image_size, list(args.set))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    name, classes, size = info["name"], info["num_classes"], info["image_size"]
    print(f"{name} ({info['family']}), {classes} classes, {size}x{size} input")
    for key, value in info["knobs"].items():
        print(f"  {key:24s} {value}")
    print(f"deploy form:   params {info['params']:>12,} ({_human(info['params'])})   "
          f"MACs {info['macs']:>14,} ({_human(info['macs'])})")
    print(f"training form: params {info['train_params']:>12,} ({_human(info['train_params'])})   "
          f"MACs {info['train_macs']:>14,} ({_human(info['train_macs'])})")
    return 0


def cmd_validate(args) -> int:
    from search.validate import validate_file

    print(validate_file(args.study, samples=args.samples))
    return 0


def _stop_on_sigterm() -> None:
    """SIGTERM (a scheduler's or `kill`'s stop) ends `run` as Ctrl-C does: trials stop, the study is
    left resumable, the exit status is 130."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def cmd_run(args) -> int:
    from search.config import load_study
    from search.sweep import Sweep

    _stop_on_sigterm()
    if not args.quiet:  # the rest takes seconds: say so at once (--quiet: the summary alone)
        print(f"effnas {_version()}: checking {args.study} ...", flush=True)

    cfg = load_study(args.study)
    if args.n_trials is not None and args.n_trials < 1:
        raise UsageError(f"--n-trials must be >= 1, got {args.n_trials}")
    import optuna

    # Optuna's INFO lines ("A new study created in RDB ...") repeat what the driver says itself.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    mode = "quiet" if args.quiet else ("live" if sys.stdout.isatty() else "lines")
    summary = Sweep(cfg, n_more=args.n_trials, progress=mode, log=(lambda _: None) if args.quiet else print).run()
    # One overhead figure (README, `status`): the summary below prints it, measured from the database.
    print(f"done: {summary.trained} trained, {summary.stopped} stopped early, {summary.failed} failed, "
          f"{summary.infeasible} infeasible, {summary.duplicate} duplicates"
          + (f", {summary.screened} screened" if summary.screened else "") + f" in {summary.wall_seconds:.1f}s")
    from search.status import print_status
    from search.storage._reader import open_snapshot

    print_status(open_snapshot(cfg.storage_url, cfg.study), cfg.storage_url)
    return 0


def _report(args, as_data: Callable, printed: Callable) -> int:
    """A read-only report of one study: JSON with --json, else text (`status`, `trials`)."""
    from search.storage._reader import open_snapshot

    name, url = _study_and_storage(args)
    study = open_snapshot(url, name)  # every trial, read in one transaction
    if args.json:
        print(json.dumps(as_data(study, url), indent=2))
    else:
        printed(study, url)
    return 0


def cmd_status(args) -> int:
    from search.status import print_status, status_dict

    return _report(args, status_dict, print_status)


def cmd_trials(args) -> int:
    from search.status import print_trials, trial_rows

    return _report(args, trial_rows, print_trials)


def cmd_evaluate(args) -> int:
    from search.config import load_study
    from search.evaluate import evaluate_exported

    out = evaluate_exported(args.model, load_study(args.study), split=args.split)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['model']}: {out['split']} accuracy {out['accuracy']:.4f} ({out['correct']}/{out['images']} "
              f"images of study {out['study']!r})")
    return 0


def cmd_dashboard(args) -> int:
    """optuna-dashboard's web app on the study's storage, served until Ctrl-C or SIGTERM."""
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise UsageError("the dashboard needs optuna-dashboard: pip install 'effnas[dashboard]'") from None
    import signal
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from search.storage import display_url, open_storage

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *a) -> None:  # one line per request would bury the address line
            pass

    name, url = _study_and_storage(args)
    storage = open_storage(url, create=False)  # a missing database is one clear error, not an empty page
    try:
        server = make_server(args.host, args.port, wsgi(storage), handler_class=QuietHandler)
    except OSError as e:
        raise UsageError(f"cannot serve on {args.host}:{args.port} ({e.strerror}); choose another --port") from None

    def stop(signum, frame) -> None:  # serve_forever returns once shutdown() runs on another thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    print(f"dashboard of {display_url(url)} (study {name or 'all'}) on http://{args.host}:{args.port}/ "
          f"(Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print("dashboard stopped", flush=True)
    return 0


def cmd_export(args) -> int:
    from search.export import _png, export_study
    from search.storage._reader import open_snapshot

    name, url = _study_and_storage(args)
    drawing = _png.start()  # loads matplotlib while the study is read
    try:
        study = open_snapshot(url, name)  # every trial, read in one transaction
    except BaseException:
        drawing.stop()
        raise
    if args.out:
        out = Path(args.out)
    elif args.storage:
        out = Path("runs") / study.study_name / "export"
    else:  # next to the study's database, wherever the command runs from
        from search.config import study_location

        out = study_location(args.study)[2] / "export"
    images = _check_images(args.study) if args.models and args.study and not args.storage else None
    export_study(study, out, models=args.models, storage_url=url, check_images=images, drawing=drawing)
    return 0


def _check_images(study_file: str):
    """32 normalised validation images of the study, for checking the exported ONNX graphs (None,
    with a line saying why, when the study's data cannot be loaded here)."""
    import torch

    from search.config import load_study
    from search.exceptions import DataError
    from search.sweep import load_study_data

    try:
        data = load_study_data(load_study(study_file))
    except DataError as e:
        print(f"ONNX graphs are checked on random inputs: {e}", flush=True)
        return None
    from trainers.augment import normalize

    return normalize(data.val_x[:32], torch.tensor(data.mean), torch.tensor(data.std))  # as the trainer does


COMMANDS: dict[str, Callable] = {
    "run": cmd_run, "status": cmd_status, "export": cmd_export, "validate": cmd_validate, "arch": cmd_arch,
    "trials": cmd_trials, "evaluate": cmd_evaluate, "dashboard": cmd_dashboard,
}


def _presets_epilog() -> str:
    from space.registry import list_families, list_presets

    return (f"families: {', '.join(list_families())}\npresets: {', '.join(list_presets())}")


def _parser(arch_help: bool = False) -> argparse.ArgumentParser:
    """The command line; ``arch_help``: list the presets under `arch --help` (that imports torch, so
    only when that help is asked for)."""
    # The `effnas` script and `python -m search` are the same program; help names the one typed.
    prog = "effnas" if os.path.basename(sys.argv[0]) == "effnas" else "python -m search"
    p = argparse.ArgumentParser(prog=prog, description="effnas: NAS sweeps over efficient CNN families")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"effnas {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser("run", help="run or resume a study")
    r.add_argument("study", help="study YAML file")
    r.add_argument("--n-trials", type=int, help="train this many more architectures (default: up to budget.n_trials)")
    r.add_argument("--quiet", action="store_true", help="print only the final summary")
    for name, helptext in (("status", "counts, front, time spent"), ("export", "write the Pareto front"),
                           ("trials", "one line per trial: status, epochs, accuracy, costs, failure reason"),
                           ("dashboard", "optuna-dashboard on the study's storage")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("study", nargs="?", help="study YAML file")
        s.add_argument("--storage", help="SQLAlchemy URL instead of a study file")
        s.add_argument("--study-name", help="study name inside --storage (if it holds several)")
        if name in ("status", "trials"):
            s.add_argument("--json", action="store_true")
        elif name == "dashboard":
            s.add_argument("--port", type=int, default=8080)
            s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
        else:
            s.add_argument("--out", help="output folder (default: export/ in the study's run directory)")
            s.add_argument("--models", action="store_true", help="also write deploy weights (+ONNX) of each member")
    v = sub.add_parser("validate", help="check a study file and show what it searches")
    v.add_argument("study")
    v.add_argument("--samples", type=int, default=300, help="random samples used to find the cheapest/largest")
    e = sub.add_parser("evaluate", help="accuracy of an exported model on its study's data")
    e.add_argument("model", help="models/trial_<n>.json written by `export --models`")
    e.add_argument("study", help="the study YAML file (its data section says which images)")
    e.add_argument("--split", choices=("test", "val"), default="test")
    e.add_argument("--json", action="store_true")
    a = sub.add_parser("arch", help="configuration, params and MACs of a preset or family",
                       epilog=_presets_epilog() if arch_help else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("name", help="preset (condensenetv2-110, ...) or family (rsnet, ...)")
    a.add_argument("--classes", type=int)
    a.add_argument("--image-size", type=int)
    a.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE")
    a.add_argument("--json", action="store_true")
    for sp in sub.choices.values():
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("effnas")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _show_causes(error: BaseException) -> None:
    """Messages are raised ``from`` their cause; with --debug the whole chain is printed, including
    causes a message hid on purpose (``from None``) because the message says it all."""
    seen = error
    while seen is not None:
        seen.__suppress_context__ = False
        seen = seen.__cause__ or seen.__context__


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    parser = _parser(arch_help="arch" in args_in and ("-h" in args_in or "--help" in args_in))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on misuse; effnas promises status 1
        return 0 if e.code in (0, None) else 1
    if not args.command:
        parser.print_help()
        return 1
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe surfaces here, not in the interpreter's exit
        return code
    except BrokenPipeError:  # `... | head` closed the pipe: the reader has what it wanted
        sys.stdout = open(os.devnull, "w")  # no second error when Python flushes stdout on exit
        return 0
    except EffnasError as e:
        if args.debug:
            _show_causes(e)
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
