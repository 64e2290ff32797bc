"""Command line: python -m trainer train|queue|generate-data|compare|caption|bench|memory|cache|stats|make-demo|
convert ... (headless, the same sessions as the window). No UI here."""
from __future__ import annotations

import argparse
import os
import signal
import sys

from trainer import events as ev
from trainer.config import DEVICES, OUTPUT_DTYPES, OUTPUT_FORMATS, load_preset, validate
from trainer.fields import ConfigError, apply_overrides

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED = 0, 1, 2, 130


def main_process() -> bool:
    """False in the other processes of an `accelerate launch` run: only the main one prints (the training
    itself passes them nothing but errors)."""
    return os.environ.get("RANK", "0") == "0"


def run_session(session, quiet: bool = False) -> int:
    """Run a session (training or a tool) in the foreground with a tqdm bar; Ctrl-C once stops cleanly, twice
    aborts. Returns the exit code."""
    from tqdm import tqdm
    interrupts = []

    def on_interrupt(signum, frame):
        interrupts.append(signum)
        if len(interrupts) == 1:
            if main_process():
                print("\nStopping after this step (Ctrl-C again to abort at once)...", file=sys.stderr)
            session.stop()
        else:
            print("\nAborted.", file=sys.stderr)
            os._exit(EXIT_STOPPED)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    # kill -USR1 PID: write a backup at the next step boundary; kill -USR2 PID: save the model.
    signal.signal(signal.SIGUSR1, lambda s, f: session.send(ev.BACKUP_NOW))
    signal.signal(signal.SIGUSR2, lambda s, f: session.send(ev.SAVE_NOW))
    bar = None
    try:
        session.start()
        while True:
            event = session.events.get()
            if isinstance(event, ev.RunStarted):
                if bar is not None:  # a queue's next run
                    bar.close()
                bar = tqdm(total=event.total_steps, unit="step", disable=quiet, dynamic_ncols=True)
            elif isinstance(event, ev.Progress) and bar is not None:
                bar.n = event.step
                bar.set_postfix(loss=f"{event.smooth_loss:.4f}", lr=f"{event.lr:.2e}", epoch=event.epoch + 1,
                                refresh=False)
                bar.refresh()
            elif isinstance(event, (ev.ImageGenerated, ev.GridCell)):
                if bar is None:
                    bar = tqdm(total=event.total, unit="image", disable=quiet, dynamic_ncols=True)
                bar.n = event.done
                bar.refresh()
            elif isinstance(event, ev.CheckpointWritten) and not quiet:
                (tqdm.write if bar else print)(f"{event.kind} written: {event.path}", file=sys.stderr)
            elif isinstance(event, ev.Log) and (event.level != "info" or not quiet):
                (tqdm.write if bar else print)(f"[{event.level}] {event.text}", file=sys.stderr)
            elif isinstance(event, ev.QueueRunState) and event.status != "pending":
                bar = queue_line(event, bar)
            elif isinstance(event, ev.Status) and not quiet and bar is None:
                print(event.text, file=sys.stderr)
            elif isinstance(event, ev.RunFinished):
                if bar is not None:
                    bar.close()
                if main_process() or event.outcome == "failed":  # a refusal of the user's input reads as the
                    label = "error" if event.bad_input else event.outcome  # checks before a session do
                    print(f"{label}: {event.message}", file=sys.stderr)
                if event.outcome == "completed":
                    return EXIT_OK
                if event.outcome == "stopped":
                    return EXIT_STOPPED
                return EXIT_BAD_INPUT if event.bad_input else EXIT_FAILED
    finally:
        signal.signal(signal.SIGINT, previous)
        session.join(5)


def queue_line(event: ev.QueueRunState, bar):
    """Say a queue's run's new state; a run that ended closes its progress bar. Returns the bar still open."""
    if bar is not None and event.status != "running":
        bar.close()
        bar = None
    print(f"queue: {event.name}: {event.status}" + (f": {event.message}" if event.message else ""), file=sys.stderr)
    return bar


def cmd_train(args) -> int:
    preset = apply_overrides(load_preset(args.preset), args.set or [], validate)
    from trainer.session import TrainingSession
    session = TrainingSession(preset, resume=args.resume, fresh=args.fresh,
                              allow_changed_data=args.allow_changed_data)
    return run_session(session, quiet=args.quiet)


def cmd_queue(args) -> int:
    """Run a queue of trainings and sweeps (trainer.tools.queue_runner), or with --dry-run check it and print its
    runs."""
    from trainer.errors import InputError
    from trainer.tools.queue_runner import check_starts, describe_runs
    from trainer.tools.run_queue import check_queue, read_state
    try:
        runs = check_queue(args.queue)
        state = read_state(args.queue)
        check_starts(runs, state)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        print("\n".join(describe_runs(runs, state) + [f"{len(runs)} run(s) checked; nothing run (--dry-run)"]))
        return EXIT_OK
    from trainer.session import queue_session
    return run_session(queue_session(args.queue), quiet=args.quiet)


def cmd_tool(args) -> int:
    """generate-data and compare: load the spec (with --set overrides), run it as a session."""
    from trainer.session import compare_session, generate_data_session
    from trainer.specs import CompareSpec, GenerateDataSpec, load_spec, validate_spec
    expected = GenerateDataSpec if args.command == "generate-data" else CompareSpec
    spec = apply_overrides(load_spec(args.spec, expected), args.set or [], validate_spec)
    session = generate_data_session(spec) if expected is GenerateDataSpec else compare_session(spec)
    return run_session(session, quiet=args.quiet)


def cmd_caption(args) -> int:
    """Caption a folder of images from a caption spec (with --set overrides) as a session; --preview N prints N
    proposed captions and writes nothing."""
    from trainer.specs import CaptionSpec, load_spec, validate_spec
    spec = apply_overrides(load_spec(args.spec, CaptionSpec), args.set or [], validate_spec)
    if not args.preview:
        from trainer.session import caption_session
        return run_session(caption_session(spec), quiet=args.quiet)
    from trainer.errors import describe_failure, is_input_error
    from trainer.tools.captioning import preview

    def emit(event):
        if isinstance(event, ev.Log) and (event.level != "info" or not args.quiet):
            print(f"[{event.level}] {event.text}", file=sys.stderr)
    try:
        found = preview(spec, args.preview, emit)
    except Exception as e:  # noqa: BLE001 - reported like a run's failure
        print(f"error: {describe_failure(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT if is_input_error(e) else EXIT_FAILED
    for image, text in found:
        print(f"{image}\n    {text}")
    print(f"{len(found)} caption(s) proposed; nothing was written", file=sys.stderr)
    return EXIT_OK


def fill_caches(preset, emit, progress=None) -> dict:
    """`python -m trainer cache`: check the inputs, load the model, fill the caches as training would; returns
    the counts (EpochPlan.report). progress(what, done, total), if given, follows each batch."""
    import torch

    from trainer.data.cache import frozen_dtype
    from trainer.data.data import EpochPlan
    from trainer.data.inputs import input_report
    from trainer.model.models import load_model
    from trainer.train.checks import check_inputs, quiet_libraries
    quiet_libraries()
    items = check_inputs(preset, emit)
    for log in input_report(preset, items):
        emit(log)
    on_gpu = preset.general.device != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = frozen_dtype(preset.training.mixed_precision, device)
    emit(ev.Status(f"Loading {preset.model.base_model}"))
    components = load_model(preset.model.base_model, preset.model.base_config or None, load_ema=preset.model.load_ema)
    components.vae.requires_grad_(False).eval().to(device, dtype)
    encode_text = not preset.training.train_text_encoder
    if encode_text:
        components.text_encoder.requires_grad_(False).eval().to(device, dtype)
    plan = EpochPlan(preset, items)
    plan.prepare(components, device, dtype, encode_text, emit, progress)
    held_out = EpochPlan(preset, items, validation=True)  # the validation images: cached too, never trained on
    if not held_out.items or preset.sampling.validate_unit == "never":
        return plan.report
    held_out.prepare(components, device, dtype, encode_text, emit, progress)
    return {key: plan.report.get(key, 0) + held_out.report.get(key, 0) for key in plan.report | held_out.report}


def cmd_cache(args) -> int:
    """Fill the latent (and text) caches of a preset, as a training run would, without training."""
    from tqdm import tqdm

    from trainer.errors import describe_failure, is_input_error
    preset = apply_overrides(load_preset(args.preset), args.set or [], validate)
    bars = {}

    def emit(event):
        if isinstance(event, ev.Log) and (event.level != "info" or not args.quiet):
            tqdm.write(f"[{event.level}] {event.text}", file=sys.stderr)
        elif isinstance(event, ev.Status) and not args.quiet and not event.text.startswith("Caching"):
            tqdm.write(event.text, file=sys.stderr)

    def progress(what, done, total):
        bar = bars.get(what) or bars.setdefault(what, tqdm(total=total, desc=what, unit="item",
                                                           disable=args.quiet, dynamic_ncols=True))
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
    try:
        report = fill_caches(preset, emit, progress)
    except Exception as e:  # noqa: BLE001 - reported like a training failure
        print(f"error: {describe_failure(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT if is_input_error(e) else EXIT_FAILED
    finally:
        for bar in bars.values():
            bar.close()
    print(", ".join(f"{k}={v}" for k, v in report.items()))
    return EXIT_OK


def cmd_stats(args) -> int:
    import json

    from trainer.data.stats import concept_stats, format_stats
    preset = apply_overrides(load_preset(args.preset), args.set or [], validate)
    stats = concept_stats(preset)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    refused = any(s["missing_caption"] == "refuse" and s["without_caption"] for s in stats if s["enabled"])
    return EXIT_BAD_INPUT if refused or any(s["error"] for s in stats if s["enabled"]) else EXIT_OK


def cmd_make_demo(args) -> int:
    from trainer.tools.demo import make_demo
    folder = make_demo(args.dir)
    print(f"demo written to {folder}")
    return EXIT_OK


def cmd_convert(args) -> int:
    from trainer.errors import ModelLoadError, plain_text
    from trainer.model.models import load_model, save_model
    try:
        components = load_model(args.source, args.base_config, load_ema=args.ema)
    except ModelLoadError as e:  # here the setting is the --ema option
        print(f"error: {plain_text(str(e)).replace('model.load_ema', '--ema')}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if components.weights_note:
        print(f"loaded the {components.weights_note.replace('model.load_ema', '--ema')}")
    from pathlib import Path

    from trainer.train.outputs import MODELSPEC_PREDICTION, write_a1111_config
    title = args.title or Path(args.dest).name.removesuffix(".safetensors")  # the file's stem, as a run writes it
    metadata = {"modelspec.title": title, "modelspec.prediction_type": MODELSPEC_PREDICTION[components.prediction_type],
                "seachange.prediction_type": components.prediction_type}
    written = save_model(components, args.dest, args.format, args.dtype, metadata)
    print(f"written {written}")
    if args.format == "single_file" and write_a1111_config(written, components.prediction_type):
        print(f"written {written.with_suffix('.yaml')} (A1111 reads it: the model predicts v)")
    return EXIT_OK


def cmd_memory(args) -> int:
    """The estimated peak GPU memory of the preset's training run (tools/memory.py), against the stated or detected
    card less its headroom; with --fit the fastest settings that fit (tools/memory_fit.py), written as a preset with
    --write."""
    import json
    from pathlib import Path

    from trainer.config import save_preset
    from trainer.errors import InputError
    from trainer.tools.memory import GIB, detected_vram_gib, estimate_memory
    from trainer.tools.memory_fit import Fit, fit_settings
    from trainer.tools.vram import a_card, amount, usable_gib
    for name, value in (("--vram", args.vram), ("--fit", args.fit)):
        if value is not None and not value > 0:
            print(f"error: {name}: give the card's memory in GiB, a number above 0 (e.g. 8 or 24)", file=sys.stderr)
            return EXIT_BAD_INPUT
    if args.write and args.fit is None:
        print("error: --write: writes the settings --fit finds; give --fit GIB too", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.write and Path(args.write).exists():
        print(f"error: --write: {args.write} exists; choose a new file name", file=sys.stderr)
        return EXIT_BAD_INPUT
    preset = apply_overrides(load_preset(args.preset), args.set or [], validate)
    vram, source = ((args.vram, "stated") if args.vram else (args.fit, "stated") if args.fit  # the card --fit names
                    else (detected_vram_gib(), "detected"))
    try:
        estimate = estimate_memory(preset)
        if args.fit and not args.json:
            print(f"Finding the fastest settings that fit {args.fit:g} GiB (a few estimates of seconds each)...")
        fit = fit_settings(preset, args.fit) if args.fit else None
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    total = estimate.total / GIB
    fits = None if vram is None else total <= usable_gib(vram)
    message = f"about {amount(total)}" + (
        " (no GPU found: give the card's size with --vram)" if vram is None else
        f" of {a_card(vram)} ({usable_gib(vram):.1f} GiB usable): " + ("fits" if fits else "does not fit"))
    if fits is False and not args.fit:
        message += f"; `--fit {vram:g}` finds settings that do"
    if isinstance(fit, Fit):
        message += (f"; with the changes above, about {amount(fit.estimate.total / GIB)}" if fit.changes else
                    "; the preset's settings are already the fastest that fit")
    elif fit is not None:
        smallest = f"{amount(fit.smallest.total / GIB)}" if fit.smallest else "nothing measurable"
        message += (f"; nothing fits {a_card(args.fit)}: the smallest these settings allow is {smallest}"
                    + (f" (blocked: {'; '.join(fit.blocked)})" if fit.blocked else ""))
    if isinstance(fit, Fit) and args.write:
        save_preset(fit.preset, args.write)
    if args.json:
        print(json.dumps({"estimate": estimate.to_json(), "vram_gib": vram, "vram_source": vram and source,
                          "usable_gib": None if vram is None else round(usable_gib(vram), 2), "fits": fits,
                          "fit": fit.to_json() if isinstance(fit, Fit) else None,
                          "no_fit": fit.to_json() if fit is not None and not isinstance(fit, Fit) else None,
                          "message": message}))
        return EXIT_OK if fit is None or isinstance(fit, Fit) else EXIT_FAILED
    print(f"Estimated peak GPU memory, batch {estimate.batch_size} at {estimate.resolution} px:")
    for part, size in estimate.to_json()["parts_gib"].items():
        print(f"  {part.replace('_', ' '):<16} {size:6.2f} GiB")
    print(f"  {'total':<16} {total:6.2f} GiB" + ("" if vram is None else f"  ({source} card: {vram:g} GiB)"))
    for note in estimate.notes:
        print(f"  note: {note}")
    if isinstance(fit, Fit) and fit.changes:
        print("Changes that fit:")
        for path, value in fit.changes.items():
            print(f"  {path} = {json.dumps(value)}")
        for line in fit.described + fit.notes:
            print(f"  ({line})")
        if args.write:
            print(f"written {args.write}")
    print(message)
    return EXIT_OK if fit is None or isinstance(fit, Fit) else EXIT_FAILED


def cmd_bench(args) -> int:
    from trainer.tools.bench import main as bench_main
    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: one subcommand per job, each with its function as `func`."""
    parser = argparse.ArgumentParser(prog="python -m trainer", description="SeaChange: fine-tune SD 1.5.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train headless from a preset")
    p.add_argument("preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. "
                   "training.learning_rate=2e-6 (repeatable)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", metavar="latest|PATH", help="continue from a backup")
    start.add_argument("--fresh", action="store_true", help="start over where an earlier run left backups, "
                       "samples or a model: they are kept, moved to WORKSPACE/earlier/ (without --resume or "
                       "--fresh such a workspace is refused)")
    p.add_argument("--allow-changed-data", action="store_true", help="resume although the concepts' images or "
                   "captions changed since the backup (the data order then differs from an uninterrupted run)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("queue", help="train a queue of runs and sweeps, one after another (QUEUE.json)")
    p.add_argument("queue", help="a queue file (JSON); its state is kept beside it in NAME.state.json")
    p.add_argument("--dry-run", action="store_true", help="check every run and print the runs, their workspaces "
                   "and the settings that differ; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_queue)
    p = sub.add_parser("cache", help="fill the latent and text caches of a preset (no training)")
    p.add_argument("preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_cache)
    p = sub.add_parser("stats", help="per concept: images, skipped files, captions, aspect buckets")
    p.add_argument("preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_stats)
    p = sub.add_parser("generate-data", help="build training data with a model from prompt templates")
    p.add_argument("spec", help="a generate_data spec file (JSON)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tool)
    p = sub.add_parser("caption", help="caption a folder of images with a local vision-language model and/or a "
                       "WD tagger")
    p.add_argument("spec", help="a caption spec file (JSON)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field (repeatable)")
    p.add_argument("--preview", type=int, default=0, metavar="N", help="print the captions proposed for the first "
                   "N images the run would change; write nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_caption)
    p = sub.add_parser("compare", help="a labelled grid: samples across steps/epochs, or prompts across models")
    p.add_argument("spec", help="a compare spec file (JSON)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tool)
    p = sub.add_parser("bench", help="speed and memory of SeaChange's training step against the reference loop")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--model", choices=("sd15", "tiny"), default=None, help="default: sd15 on a GPU, tiny on a CPU")
    p.add_argument("--batch-sizes", default=None, help="comma list; default 1,4,16 on a GPU, 1,4 on a CPU")
    p.add_argument("--presets", default=None, help="built-in preset names, comma list")
    p.add_argument("--steps", type=int, default=None, help="steps per run (a quarter are warm-up)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("memory", help="estimated GPU memory of a preset's training step; --fit: settings that fit")
    p.add_argument("preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field (repeatable)")
    p.add_argument("--vram", type=float, default=None, metavar="GIB", help="the card's memory (default: detected)")
    p.add_argument("--fit", type=float, default=None, metavar="GIB", help="find the fastest settings that fit")
    p.add_argument("--write", default=None, metavar="PRESET", help="with --fit: write the preset with them here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_memory)
    p = sub.add_parser("make-demo", help="build the tiny demo model and its images")
    p.add_argument("dir")
    p.set_defaults(func=cmd_make_demo)
    p = sub.add_parser("convert", help="convert a model between single-file and diffusers formats")
    p.add_argument("source")
    p.add_argument("dest")
    p.add_argument("--format", choices=OUTPUT_FORMATS, default="single_file")
    p.add_argument("--dtype", choices=OUTPUT_DTYPES, default="float16")
    p.add_argument("--base-config", default=None, help="diffusers config folder for a non-SD-1.5 single file")
    p.add_argument("--title", default=None)
    p.add_argument("--ema", action="store_true", help="write the EMA UNet weights of a file that holds raw and "
                   "EMA ones (default: the raw ones)")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:  # a bad preset or spec file, or a bad --set: named by its dotted path
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        leave_process_group()


def leave_process_group() -> None:
    """Under `accelerate launch`: leave the process group before the interpreter ends, as torch.distributed asks.
    Left to the interpreter's teardown, it can abort the process (SIGABRT in place of the exit code) once the
    other machines' processes are gone, as after a refusal all of them share."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - the exit code already says how the run ended
            pass


if __name__ == "__main__":
    sys.exit(main())
