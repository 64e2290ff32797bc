"""The checks a run makes before anything heavy loads, and once the model is loaded: the user's inputs are used as
they meant them or refused with a message naming the field or file (InputError). No UI here."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from trainer import events as ev
from trainer.config import Preset, preset_to_json, validate
from trainer.data.data import Items, collect_items
from trainer.data.inputs import dataset_record, input_report, long_caption_report
from trainer.errors import InputError
from trainer.fields import atomic_write_text
from trainer.train.backup import Position, check_backup, check_folders_and_disk
from trainer.train.objective import resolve_prediction_type
from trainer.train.processes import ProcessView, checked_together, fill_once_per_folder, main_process_first
from trainer.train.runs import MANIFEST, claim_workspace
from trainer.train.sampling import sample_prompt_warnings


@dataclass
class RunInputs:
    """What the checks found: the images to train on (data.Items), this run's id (trainer.train.runs), the backup to
    resume from (None: a fresh start), where the run starts, and the record of the images (inputs.dataset_record)."""
    items: Items
    run_id: str
    backup_folder: Path | None
    start: Position
    dataset: dict


def check_run(preset: Preset, accelerator, resume: str | None, fresh: bool, allow_changed_data: bool,
              emit: Callable) -> RunInputs:
    """Every check before anything heavy loads: the preset and its files (each machine's local main process first,
    unless the machines share the folder: it may build the demo, and it indexes the images in the cache folder;
    processes.fill_once_per_folder), the backup to resume from and the workspace (the main process first: it may
    move an earlier run aside, trainer.train.runs.claim_workspace); then what the inputs hold is said in the log and the
    resolved preset written into the workspace. resume: 'latest', a backup folder, or None for backup.resume.
    Raises InputError naming the field or file. Under `accelerate launch` every process checks what its machine
    sees, and a refusal on any process is raised on all (processes.checked_together); they must also see the same
    images and resume from the same backup (start_disagreement)."""
    emit(ev.Status("Checking inputs"))
    quiet_libraries()
    if preset.training.fused_backward and accelerator.num_processes > 1:
        raise InputError("training.fused_backward: works with one process only (gradients are averaged across "
                         "processes after the backward pass, too late for a step inside it)")
    general = preset.general
    with checked_together(accelerator, start_disagreement) as facts:
        with fill_once_per_folder(accelerator, general.demo_dir):
            make_missing_demo(preset, emit)
        with fill_once_per_folder(accelerator, general.cache_dir):  # the file index of the images lies there
            items = check_inputs(preset, emit)
        dataset = dataset_record(items)
        facts["dataset"] = dataset_fingerprint(dataset)
    with checked_together(accelerator, start_disagreement) as facts:
        with main_process_first(accelerator):
            run_id, backup_folder = claim_workspace(preset, resume or preset.backup.resume or None, fresh, emit,
                                                    accelerator.is_main_process)
        facts["backup"] = backup_fingerprint(backup_folder)
        start = check_resume(backup_folder, preset, accelerator.num_processes, dataset, allow_changed_data, emit)
    for log in input_report(preset, items):
        emit(log)
    if accelerator.is_main_process:
        workspace = Path(preset.general.workspace_dir).expanduser()
        workspace.mkdir(parents=True, exist_ok=True)
        atomic_write_text(workspace / "preset.json", preset_to_json(preset))
    return RunInputs(items, run_id, backup_folder, start, dataset)


def make_missing_demo(preset: Preset, emit: Callable) -> None:
    """Build the demo (trainer.tools.demo.make_demo) in general.demo_dir when that is set and lacks the demo's model or
    images; it says how far it is."""
    demo = Path(preset.general.demo_dir).expanduser() if preset.general.demo_dir else None
    if demo and not ((demo / "model" / "model_index.json").is_file() and (demo / "images").is_dir()):
        from trainer.tools.demo import make_demo
        make_demo(preset.general.demo_dir, seed=preset.general.seed, emit=emit)


def check_inputs(preset: Preset, emit: Callable) -> Items:
    """Everything that can be checked before a model loads (the demo built first, if missing: make_missing_demo);
    raises InputError naming the problem."""
    make_missing_demo(preset, emit)
    problems = validate(preset, check_paths=True)
    if problems:
        raise InputError(problems[0])
    if preset.general.device == "cuda" and not torch.cuda.is_available():
        raise InputError("general.device: 'cuda' was chosen but no CUDA GPU is visible")
    check_folders_and_disk(preset)
    on_gpu = preset.general.device != "cpu" and torch.cuda.is_available()
    if preset.training.mixed_precision == "fp16" and not on_gpu:
        raise InputError("training.mixed_precision: fp16 needs a CUDA GPU; use bf16 or no on the CPU")
    if preset.training.method == "lora" and preset.model.lora_weights:
        check_lora_file(preset)
    items = collect_items(preset)
    check_placeholder_in_captions(preset, items, emit)
    return items


def check_lora_file(preset: Preset) -> None:
    """The LoRA to continue (model.lora_weights) is an SD 1.5 LoRA in kohya's layout, of the kind, parts and ranks
    the LoRA settings make (its shapes against the model's layers are checked once the model loads). Raises
    InputError naming the field and what to set."""
    from trainer.model.lora import read_lora_file
    training, path = preset.training, preset.model.lora_weights
    found = read_lora_file(path)
    if found.kind != training.lora_type:
        raise InputError(f"model.lora_weights: {path} is a {found.kind}; set training.lora_type to {found.kind}")
    for part, on in (("unet", training.train_unet), ("text_encoder", training.train_text_encoder)):
        if on != (part in found.parts):
            raise InputError(f"model.lora_weights: {path} has {'no ' if on else ''}{part.replace('_', ' ')} "
                             f"layers: turn training.train_{part} {'off' if on else 'on'} to continue it")
    ranks = {rank for rank in found.ranks.values() if rank is not None}
    wanted = {training.lora_rank} | ({training.lora_conv_rank} if training.lora_conv_rank else set())
    if ranks - wanted:
        raise InputError(f"model.lora_weights: {path} has rank {', '.join(map(str, sorted(ranks)))}; set "
                         f"training.lora_rank (and lora_conv_rank for its convolutions) to the file's")


def check_placeholder_in_captions(preset: Preset, items: Items, emit: Callable) -> None:
    """A new word (training.embedding_placeholder) learns only from captions that use it: none that does is
    refused (InputError) for method embedding; images whose captions never use it are said in the log."""
    word = preset.training.embedding_placeholder.lower()
    if not word:
        return
    items = [item for item in items if preset.concepts[item.concept_index].role != "validation"]  # never trained
    without = [item for item in items if not any(word in caption.lower() for caption in item.captions)]
    if len(without) == len(items) and preset.training.method == "embedding":
        raise InputError(f"training.embedding_placeholder: no caption uses {word!r}, so the word cannot learn: write "
                         f"it into the captions (e.g. 'a painting in {word} style'), or use caption source single "
                         "with a concept caption that has it")
    if without:
        emit(ev.Log("warning", f"{len(without)} of {len(items)} images have no caption with {word!r} (e.g. "
                               f"{without[0].path.name}); they do not teach the word"))


def check_resume(folder: Path | None, preset: Preset, num_processes: int, dataset: dict, allow_changed_data: bool,
                 emit: Callable) -> Position:
    """Where the run starts: step 0, or the position of the backup in `folder` once backup.check_backup accepts
    it (InputError otherwise, before the model loads); what changed since the backup is said in the log."""
    if folder is None:
        return Position(0, 0, 0)
    start, harmless, data_notes = check_backup(folder, preset, num_processes, dataset, allow_changed_data)
    if harmless:
        emit(ev.Log("info", f"Changed since the backup (harmless, taken from here on): {', '.join(harmless)}"))
    for note in data_notes:
        emit(ev.Log("warning", note))
    return start


SHARED_BACKUP = ("resuming on several machines needs general.workspace_dir on a disk every machine shares, or a copy "
                 "of that backup folder at the same path on each machine")


def backup_fingerprint(folder: Path | None) -> tuple[str, str] | None:
    """The backup a process resumes from, as the processes compare it: (its folder's name, the sha256 hex digest of
    its manifest.json, which names its step, run id and files); None for a fresh start."""
    if folder is None:
        return None
    return folder.name, hashlib.sha256((Path(folder) / MANIFEST).read_bytes()).hexdigest()


def dataset_fingerprint(dataset: dict) -> tuple[int, str]:
    """The images a process trains on, as the processes compare them: (the image count, the sha256 hex digest of
    inputs.dataset_record as sorted JSON: every path with its content and caption hashes)."""
    text = json.dumps(dataset, sort_keys=True, separators=(",", ":"))
    return len(dataset), hashlib.sha256(text.encode()).hexdigest()


def start_disagreement(views: list[ProcessView]) -> InputError | None:
    """Whether every process starts as the main one (views[0]) does, from the facts check_run records: the same
    images ("dataset": dataset_fingerprint) and the same backup ("backup": backup_fingerprint). Returns the
    InputError naming the first machine that differs and what it needs, or None. A process that failed on
    backup.resume (e.g. no backup in its workspace for 'latest') while the main one resumes does not see that
    backup; its other failures, and any failure of the main process, are left to processes.checked_together."""
    main = views[0]
    if main.failure is not None:
        return None
    for view in views[1:]:
        where = f"machine {view.machine}"
        if "dataset" in main.facts and view.failure is None and view.facts.get("dataset") != main.facts["dataset"]:
            count, main_count = view.facts.get("dataset", (0, ""))[0], main.facts["dataset"][0]
            return InputError(f"concepts: {where} reads other images or captions than machine {main.machine} "
                              f"({count} image(s) there, {main_count} on machine {main.machine}); every machine "
                              "needs the same concept folders, with the same files, at the same paths")
        if "backup" not in main.facts:
            continue
        ours, theirs = main.facts["backup"], view.facts.get("backup")
        if view.failure is not None:
            kind, message, _ = view.failure
            if ours is None or kind != "input" or not message.startswith("backup.resume:"):
                continue
            detail = f" ({message})"
        elif theirs == ours:
            continue
        elif ours is None:
            return InputError(f"backup.resume: {where} resumes from {theirs[0]} and machine {main.machine} starts "
                              "fresh; launch every machine with the same --resume (and the same backup.resume)")
        elif theirs is None:
            detail = " (it starts fresh: launch every machine with the same --resume)"
        else:
            detail = f" (it finds {theirs[0]})" if theirs[0] != ours[0] else " (its copy differs)"
        return InputError(f"backup.resume: {where} does not see the backup {ours[0]} that machine {main.machine} "
                          f"resumes from{detail}; {SHARED_BACKUP}")
    return None


def check_model_inputs(preset: Preset, items: list, components, emit: Callable) -> str:
    """Once the model (models.SDComponents) is loaded: which weights were loaded, the objective to train
    (training.prediction_type resolved against the base model's own, with a warning when they differ) and the
    texts longer than its tokenizer's window (captions, sample prompts), said once in the log. Returns the
    objective; InputError if zero-terminal SNR is asked of an epsilon objective."""
    training = preset.training
    if components.weights_note:  # raw or EMA weights, when the file holds both
        emit(ev.Log("info", f"Loaded the {components.weights_note}"))
    prediction_type, warning = resolve_prediction_type(training.prediction_type, components)
    how = (f"the base model's own ({components.prediction_source})" if training.prediction_type == "auto"
           else "as chosen")
    emit(ev.Log("info", f"Training objective: {prediction_type}, {how}"))
    if warning:
        emit(ev.Log("warning", warning))
    if training.zero_terminal_snr and prediction_type != "v_prediction":
        raise InputError(f"training.zero_terminal_snr: needs the v_prediction objective, and this run trains "
                         f"{prediction_type} (training.prediction_type {training.prediction_type}); set "
                         "training.prediction_type to v_prediction or turn zero terminal SNR off")
    steps = components.noise_scheduler.config.num_train_timesteps
    if training.max_timestep > steps:
        raise InputError(f"training.max_timestep: {training.max_timestep} is past this model's {steps} training "
                         f"timesteps; set it to {steps} or less")
    for log in long_caption_report(preset, items, components.tokenizer):
        emit(log)
    for text in sample_prompt_warnings(components.tokenizer, preset.sampling.prompts, training.max_token_length):
        emit(ev.Log("warning", text))
    return prediction_type


def quiet_libraries() -> None:
    """diffusers and transformers print loading bars and casting notes; the run reports its own progress."""
    import diffusers
    import transformers
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
