"""The preset: one dataclass tree (schema, form metadata, JSON, migrations, validation). No UI here."""
from __future__ import annotations

import copy
import json
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

from trainer.fields import (ConfigError, _from_dict, atomic_write_text, field_problems, in_file, opt, read_json_file,
                            read_versioned)

VERSION = 1

SAMPLERS = ("ddim", "euler", "euler_a", "dpmpp_2m", "unipc")
OPTIMIZERS = ("adamw", "adamw8bit", "adafactor", "lion", "prodigy", "sgd", "adamw_schedulefree", "prodigy_schedulefree",
              "came", "adopt", "ademamix")
# Schedule-free optimizers (Defazio et al. 2024) average their weights instead of following a decaying schedule:
# samples and saves use the average (optim.Stepper.evaluation_weights), the LR schedule stays constant.
SCHEDULE_FREE = ("adamw_schedulefree", "prodigy_schedulefree")
# Optimizers whose step needs every gradient at once (Prodigy's step size is estimated over all of them): they
# cannot be stepped in buckets, as the fused back pass and bf16 weights with stochastic rounding step.
WHOLE_STEP_OPTIMIZERS = ("prodigy", "prodigy_schedulefree")
# What an empty training.betas / training.eps means, per optimizer: its library's defaults (lion keeps the
# (0.9, 0.999) SeaChange always gave it). came takes two eps (eps1, eps2); betas of three: came's third
# averages its confidence, ademamix's third (beta3) is its slow momentum.
OPTIMIZER_DEFAULTS: dict[str, dict[str, tuple[float, ...]]] = {
    "adamw": {"betas": (0.9, 0.999), "eps": (1e-8,)},
    "adamw8bit": {"betas": (0.9, 0.999), "eps": (1e-8,)},
    "lion": {"betas": (0.9, 0.999)},
    "prodigy": {"betas": (0.9, 0.999), "eps": (1e-8,)},
    "adamw_schedulefree": {"betas": (0.9, 0.999), "eps": (1e-8,)},
    "prodigy_schedulefree": {"betas": (0.9, 0.999), "eps": (1e-8,)},
    "came": {"betas": (0.9, 0.999, 0.9999), "eps": (1e-30, 1e-16)},
    "adopt": {"betas": (0.9, 0.9999), "eps": (1e-6,)},
    "ademamix": {"betas": (0.9, 0.999, 0.9999), "eps": (1e-8,)},
}
# The optimizer settings of TrainingConfig and the optimizers that read them (the window shows each one only
# for those; every other training field applies to every optimizer).
OPTIMIZER_FIELDS: dict[str, tuple[str, ...]] = {
    "betas": tuple(name for name in OPTIMIZER_DEFAULTS),
    "eps": tuple(name for name, defaults in OPTIMIZER_DEFAULTS.items() if "eps" in defaults),
    "prodigy_d_coef": ("prodigy", "prodigy_schedulefree"),
    "prodigy_d0": ("prodigy", "prodigy_schedulefree"),
    "schedulefree_r": SCHEDULE_FREE,
    "schedulefree_weight_lr_power": SCHEDULE_FREE,
    "ademamix_alpha": ("ademamix",),
    "ademamix_t_alpha_beta3": ("ademamix",),
}
# The diffusers schedules that need nothing beyond warmup and total steps ("piecewise_constant" needs step rules).
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
INTERVAL_UNITS = ("steps", "epochs", "minutes", "never")
MISSING_CAPTION_ACTIONS = ("concept_caption", "filename", "skip", "refuse")
MAX_TOKEN_LENGTHS = (75, 150, 225)
PREDICTION_TYPES = ("epsilon", "v_prediction")  # the objectives SeaChange trains, as diffusers names them
DEVICES = ("auto", "cpu", "cuda")  # auto: the GPU when there is one
OUTPUT_FORMATS = ("single_file", "diffusers")
OUTPUT_DTYPES = ("float16", "bfloat16", "float32")  # precisions a model is saved in, as torch names them
METHODS = ("full", "lora", "embedding")  # what a run trains: all weights, a LoRA-family adapter, an embedding
LORA_TYPES = ("lora", "loha", "lokr")  # the LoRA family as kohya and LyCORIS name its kinds (LoCon: lora + convs)
LOSS_TYPES = ("mse", "l1", "huber", "smooth_l1")  # kohya's --loss_type (its "l2" is mse)
HUBER_SCHEDULES = ("constant", "exponential", "snr")  # kohya's --huber_schedule (Khrulkov et al. 2024)
TIMESTEP_DISTRIBUTIONS = ("uniform", "logit_normal")  # OneTrainer's timestep_distribution, the two SD 1.5 uses
# What a concept's images are for: trained on; mixed into every epoch to keep the base model's knowledge
# (DreamBooth's prior preservation, kohya's reg images); or held out to measure the validation loss on.
CONCEPT_ROLES = ("train", "regularization", "validation")
# Where a concept's loss masks come from (masked training, OneTrainer's): none; each image's alpha channel; a
# grey mask file beside each image (NAME + mask_suffix + .png, OneTrainer's NAME-masklabel.png).
MASK_MODES = ("off", "alpha", "file")


@dataclass
class GeneralConfig:
    workspace_dir: str = opt("workspace/run", "Workspace", "Folder for samples, backups, saves, logs and the "
                             "resolved preset of each run.", kind="dir")
    cache_dir: str = opt("workspace/cache", "Cache folder", "Folder for cached latents and text embeddings.",
                         kind="dir")
    seed: int = opt(42, "Seed", "Seed for noise, timesteps, data order and augmentations.", min=0, max=2**31 - 1)
    dataloader_workers: int = opt(0, "Loader workers", "Processes that decode and augment images while the "
                                  "model trains; 0 loads in the training process (fine on a CPU or with "
                                  "cached latents), 2-8 on a GPU without latent caching.", min=0, max=64)
    device: str = opt("auto", "Device", "Where to train: auto picks the GPU when there is one.",
                      choices=DEVICES)
    cpu_threads: int = opt(0, "CPU threads", "torch threads when training on the CPU; 0 keeps torch's default (one "
                           "per core). 1 is fastest for small models on a machine that is busy with other work.",
                           min=0, max=256)
    tensorboard: bool = opt(True, "TensorBoard", "Write loss, learning rate and samples for TensorBoard "
                            "under workspace/tensorboard.")
    demo_dir: str = opt("", "Demo folder", "When set and the folder is missing, the embedded demo (a tiny model "
                        "and generated images) is built there before training.", kind="dir")


@dataclass
class ModelConfig:
    base_model: str = opt("", "Base model", "SD 1.5 to start from: a diffusers folder, a single .safetensors "
                          "or a .ckpt file.", kind="path")
    base_config: str = opt("", "Base config", "Optional diffusers config folder for a single-file model whose "
                           "shapes are not SD 1.5's. Empty uses the bundled SD 1.5 configs.", kind="dir")
    load_ema: bool = opt(False, "Start from EMA weights", "For a single file that holds both raw and EMA weights "
                         "(model_ema.*): start from the EMA weights instead of the raw ones (the raw ones are "
                         "usually right for fine-tuning).")
    output_path: str = opt("workspace/run/model.safetensors", "Output", "Where the final model is written: "
                           "a .safetensors file, or a folder for the diffusers format. Method lora: the LoRA "
                           "file; method embedding: the embedding file (A1111 calls it by its file name).",
                           kind="path")
    output_format: str = opt("single_file", "Output format", "single_file: one .safetensors that A1111, "
                             "ComfyUI and diffusers load; diffusers: a diffusers folder. Method lora: the "
                             "format of the merged model.", choices=OUTPUT_FORMATS)
    output_dtype: str = opt("float16", "Output precision", "Precision of the saved weights.",
                            choices=OUTPUT_DTYPES)
    lora_weights: str = opt("", "Start from LoRA", "Method lora: a LoRA .safetensors (kohya's layout, as "
                            "SeaChange, kohya and OneTrainer write it) to continue training; its type, rank and "
                            "alpha must match the LoRA settings. Empty starts a new LoRA.", kind="file")
    merged_output_path: str = opt("", "Merged model", "Method lora: also write the base model with the LoRA "
                                  "merged in at the end, here (in the output format and precision below); "
                                  "empty writes none.", kind="path")
    merge_strength: float = opt(1.0, "Merge strength", "Method lora: the LoRA's strength in the merged model "
                                "(1 = as trained).", min=-10.0, max=10.0)
    embed_preset: bool = opt(True, "Embed the preset", "Write the run's preset into each saved model's metadata "
                             "(paths as the workspace sees them, never your home folder); off writes none.")


@dataclass
class ConceptConfig:
    name: str = opt("concept", "Name", "A name for this concept, shown in logs and statistics.")
    path: str = opt("", "Folder", "Folder holding this concept's images (png, jpg, webp, bmp, tif).", kind="dir")
    enabled: bool = opt(True, "Enabled", "Train on this concept.")
    role: str = opt("train", "Role", "train: trained on. regularization: images of the base model's own (a "
                    "prior-preservation set, e.g. made with the tools tab from the base model) mixed into every epoch "
                    "at the rate below, their loss weighted by the concept's loss weight (kohya's prior loss weight), "
                    "so a fine-tune on a few images keeps the model's general knowledge. validation: never trained "
                    "on; their loss is measured with fixed noise and timesteps at the sampling tab's validation "
                    "interval and drawn beside the training loss.", choices=CONCEPT_ROLES)
    include_subdirectories: bool = opt(False, "Include subfolders", "Also take the images in every folder below "
                                       "this one.")
    caption_source: str = opt("txt", "Caption source", "txt: image.txt beside each image (a random non-empty "
                              "line per use); filename: the file name; single: the caption below for all; "
                              "txt_or_filename: the txt file when there is one, else the file name.",
                              choices=("txt", "filename", "single", "txt_or_filename"))
    caption: str = opt("", "Caption", "The caption for 'single', and the fallback when a txt file is missing.")
    missing_caption: str = opt("concept_caption", "Without a caption", "What to do with an image whose caption "
                               "file is missing or empty (caption source txt): concept_caption trains it with "
                               "the Caption above (empty if none); filename uses its file name; skip leaves it "
                               "out; refuse stops before training and lists the images.",
                               choices=MISSING_CAPTION_ACTIONS)
    repeats: float = opt(1.0, "Repeats", "How often each image is seen per epoch: 2 = twice, 0.5 = half of the "
                         "images each epoch (a different half each time). Role train only: a regularization "
                         "concept has its rate, a validation image is measured once each time.", min=0.0,
                         max=1000.0)
    regularization_rate: float = opt(1.0, "Regularization rate", "Role regularization: how many of its images "
                                     "each epoch mixes in, per training image use of the epoch; 1 = as many as the "
                                     "training images (kohya's balance), 0.5 = half as many. The images take turns "
                                     "across epochs, so a large set is used evenly. (Repeats do not apply.)",
                                     min=0.0, max=100.0)
    loss_weight: float = opt(1.0, "Loss weight", "Weight of this concept's images in the loss (1 = normal). For a "
                             "regularization concept this is kohya's prior loss weight.", min=0.0, max=100.0)
    masks: str = opt("off", "Masks", "Masked training: where the loss counts. alpha: each image's transparency; "
                     "file: a grey mask beside each image, NAME + the suffix below + .png (OneTrainer's "
                     "NAME-masklabel.png), the same size as the image. White trains at full weight, black at the "
                     "unmasked weight, grey in between; an image without a mask trains unmasked.",
                     choices=MASK_MODES)
    mask_suffix: str = opt("-masklabel", "Mask suffix", "Masks file: the mask of cat.jpg is cat + this + .png "
                           "(OneTrainer's -masklabel). Such files are masks, not training images.")
    unmasked_weight: float = opt(0.1, "Unmasked weight", "Masks on: the loss weight where the mask is black (0 = "
                                 "ignore it; OneTrainer's unmasked_weight, 0.1 by default). Grey mask levels below it "
                                 "count as it.", min=0.0, max=1.0)
    normalize_masked_area_loss: bool = opt(False, "Normalize by mask area", "Masks on: divide each image's loss by "
                                           "the mean of its weights, so a small masked area counts as much as a "
                                           "whole image (OneTrainer's normalize_masked_area_loss).")
    resolution: str = opt("", "Resolution", "Training size for this concept, one size or a list like "
                          "'512,640'; empty uses the training resolution.")
    random_flip: bool = opt(False, "Random flip", "Mirror images left-right at random.")
    random_flip_probability: float = opt(0.5, "Flip probability", "Share of uses that are mirrored.",
                                         min=0.0, max=1.0)
    crop_jitter: bool = opt(False, "Crop jitter", "Move the crop (and zoom in slightly) at random instead of "
                            "cropping the center.")
    crop_jitter_strength: float = opt(1.0, "Crop jitter strength", "1 = anywhere in the spare border plus up "
                                      "to 10% zoom; 0 = center crop.", min=0.0, max=1.0)
    random_brightness: bool = opt(False, "Random brightness", "Scale brightness at random.")
    random_brightness_strength: float = opt(0.1, "Brightness strength", "Largest change, as a share "
                                            "(0.1 = ±10%).", min=0.0, max=1.0)
    random_contrast: bool = opt(False, "Random contrast", "Scale contrast at random.")
    random_contrast_strength: float = opt(0.1, "Contrast strength", "Largest change, as a share (0.1 = ±10%).",
                                          min=0.0, max=1.0)
    random_saturation: bool = opt(False, "Random saturation", "Scale colour saturation at random.")
    random_saturation_strength: float = opt(0.1, "Saturation strength", "Largest change, as a share "
                                            "(0.1 = ±10%).", min=0.0, max=1.0)
    random_hue: bool = opt(False, "Random hue", "Rotate hues at random.")
    random_hue_strength: float = opt(0.02, "Hue strength", "Largest rotation, as a share of the colour circle "
                                     "(0.02 = ±7°).", min=0.0, max=0.5)
    image_variations: int = opt(4, "Cached variations", "With latent caching and random crop or colour "
                                "augmentations on: how many augmented versions of each image are cached "
                                "(one is picked per use; flips are cached on top).", min=1, max=64)
    shuffle_tags: bool = opt(False, "Shuffle tags", "Shuffle the comma-separated tags of each caption.")
    keep_tags: int = opt(0, "Keep first tags", "Tags at the start that stay in place and are never dropped.",
                         min=0, max=1000)
    tag_dropout: float = opt(0.0, "Tag dropout", "Chance of leaving out each (not kept) tag.", min=0.0, max=1.0)
    caption_dropout: float = opt(0.0, "Caption dropout", "Chance of training on an empty caption (teaches the "
                                 "unconditional case used by CFG).", min=0.0, max=1.0)


@dataclass
class TrainingConfig:
    method: str = opt("full", "Method", "full: fine-tune the model's weights; lora: train a small LoRA-family "
                      "adapter beside the frozen model (a file of a few MB); embedding: train a new word "
                      "(textual inversion) with everything else frozen.", choices=METHODS)
    epochs: int = opt(10, "Epochs", "Passes over the concepts.", min=1, max=100000)
    max_steps: int = opt(0, "Max steps", "Optimizer steps to train; 0 uses the epochs.", min=0, max=10**8)
    batch_size: int = opt(1, "Batch size", "Images per forward pass.", min=1, max=1024)
    gradient_accumulation_steps: int = opt(1, "Accumulation steps", "Batches summed per optimizer step.",
                                           min=1, max=1024)
    optimizer: str = opt("adamw", "Optimizer", "adamw8bit and lion use bitsandbytes; prodigy sets its own "
                         "step size (use learning rate 1.0). adamw_schedulefree and prodigy_schedulefree need no "
                         "decaying schedule: they average the weights as they train, and samples and saves use "
                         "the average (LR schedule constant). came, adopt and ademamix come from "
                         "pytorch-optimizer. Each optimizer's own settings appear below it.", choices=OPTIMIZERS)
    learning_rate: float = opt(1e-5, "Learning rate", "UNet learning rate.", min=0.0, max=10.0)
    weight_decay: float = opt(1e-2, "Weight decay", "Decoupled weight decay.", min=0.0, max=1.0)
    betas: str = opt("", "Betas", "The optimizer's decay rates (its betas), comma-separated; empty uses its own. "
                     "Two for adamw, adamw8bit, lion, prodigy (0.9,0.999), adopt (0.9,0.9999) and the schedule-free "
                     "ones, whose beta1 interpolates between the average and the newest weights (0.9; 0.95-0.98 "
                     "for long runs); three for came (0.9,0.999,0.9999) and ademamix, whose third is beta3, the "
                     "slow momentum (0.9999).")
    eps: str = opt("", "Eps", "The optimizer's eps (keeps its division finite); empty uses its own: 1e-8, adopt "
                   "1e-6. came takes two, eps1 and eps2 (1e-30,1e-16).")
    prodigy_d_coef: float = opt(1.0, "d_coef", "Prodigy: multiplies the step size it estimates; below 1 (0.5) "
                                "trains more gently, above 1 more strongly. Keep the learning rate at 1.0.",
                                min=0.001, max=1000.0)
    prodigy_d0: float = opt(1e-6, "d0", "Prodigy: its first step-size estimate, from which it grows; raise it "
                            "(1e-5, 1e-4) when the first few hundred steps learn too little.", min=1e-12, max=1.0)
    schedulefree_r: float = opt(0.0, "r", "Schedule-free: the average weighs step t by t^r; 0 weighs every "
                                "step alike once warmed up.", min=0.0, max=10.0)
    schedulefree_weight_lr_power: float = opt(2.0, "weight_lr_power", "Schedule-free: the average weighs each "
                                              "step by its learning rate to this power, so the small warmup "
                                              "steps count little.", min=0.0, max=10.0)
    ademamix_alpha: float = opt(5.0, "alpha", "AdEMAMix: the weight of the slow momentum (beta3) beside the "
                                "fast one; 5 is the paper's, 8 for long runs.", min=0.0, max=100.0)
    ademamix_t_alpha_beta3: int = opt(0, "t_alpha_beta3", "AdEMAMix: steps over which alpha rises from 0 and "
                                      "beta3 from beta1 to their values; 0 for none (pytorch-optimizer's "
                                      "default). The paper warms them up over the whole run: give its steps.",
                                      min=0, max=10**8)
    lr_scheduler: str = opt("constant", "LR schedule", "diffusers' learning-rate schedules. The schedule-free "
                            "optimizers need constant.", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = opt(0, "Warmup steps", "Optimizer steps of linear warm-up (adamw_schedulefree warms "
                               "up itself over them: its warmup_steps).", min=0, max=10**7)
    max_grad_norm: float = opt(1.0, "Max grad norm", "Clip the gradient norm to this; 0 turns clipping off.",
                               min=0.0, max=1e6)
    mixed_precision: str = opt("no", "Mixed precision", "Autocast precision; fp16 uses a grad scaler.",
                               choices=("no", "fp16", "bf16"))
    gradient_checkpointing: bool = opt(False, "Gradient checkpointing", "Recompute activations in the backward "
                                       "pass: much less memory, about 25% slower.")
    weight_dtype: str = opt("float32", "Weight precision", "Precision of the trained weights in memory. "
                            "bfloat16 halves the memory of weights and gradients; use it with stochastic "
                            "rounding.", choices=("float32", "bfloat16"))
    stochastic_rounding: bool = opt(True, "Stochastic rounding", "With bfloat16 weights: compute each update in "
                                    "float32 and round it up or down at random, so small updates still count "
                                    "on average. Off, most fine-tuning updates round away.")
    fused_backward: bool = opt(False, "Fused back pass", "Step the weights during the backward pass as their "
                               "gradients complete (in buckets of about 16M values) and free those gradients at "
                               "once: the memory of all gradients is never needed. "
                               "Needs accumulation 1, max grad norm 0 and one process.")
    compile: bool = opt(False, "Compile UNet", "torch.compile the UNet: faster steps on a GPU after a "
                        "compile of a minute or more at the start (cached across runs where torch can).")
    resolution: str = opt("512", "Resolution", "Training size in pixels (multiple of 8), or a list like "
                          "'512,640' picked per image per epoch.")
    aspect_bucketing: bool = opt(True, "Aspect ratio buckets", "Train each image near its own aspect ratio "
                                 "(buckets of about resolution² pixels, 1:4 to 4:1) instead of a square crop.")
    cache_latents: bool = opt(True, "Cache latents", "Encode each image with the VAE once and keep the result "
                              "in the cache folder; much faster epochs.")
    train_unet: bool = opt(True, "Train UNet", "Update the UNet.")
    train_text_encoder: bool = opt(False, "Train text encoder", "Update the CLIP text encoder too.")
    text_encoder_learning_rate: float = opt(0.0, "Text encoder LR", "Learning rate of the text encoder; 0 uses "
                                            "the UNet learning rate.", min=0.0, max=10.0)
    text_encoder_stop_epoch: int = opt(0, "Stop text encoder after epoch", "Freeze the text encoder after this "
                                       "many epochs; 0 never freezes it.", min=0, max=100000)
    lora_type: str = opt("lora", "LoRA type", "lora: low-rank matrices (Hu et al. 2021); loha: Hadamard "
                         "product of two low-rank pairs (LyCORIS); lokr: Kronecker product (LyCORIS). A1111 and "
                         "ComfyUI load all three; diffusers loads lora.", choices=LORA_TYPES)
    lora_rank: int = opt(16, "Rank", "Rank (kohya's network_dim) of the adapter on the attention and "
                         "feed-forward layers.", min=1, max=1024)
    lora_alpha: float = opt(8.0, "Alpha", "The adapter's output is scaled by alpha / rank (kohya's "
                            "network_alpha); alpha = rank scales by 1.", min=0.0, max=4096.0)
    lora_conv_rank: int = opt(0, "Conv rank", "Rank on the UNet's ResNet, down- and upsampling convolutions "
                              "too (LoCon, kohya's conv_dim); 0 leaves them out.", min=0, max=1024)
    lora_conv_alpha: float = opt(1.0, "Conv alpha", "Alpha of the convolution adapters (kohya's conv_alpha).",
                                 min=0.0, max=4096.0)
    lora_dropout: float = opt(0.0, "Dropout", "Dropout on the adapter's input while training (0 = none).",
                              min=0.0, max=1.0)
    embedding_placeholder: str = opt("", "Placeholder", "The new word, as captions and prompts use it (for "
                                     "example 'mystyle'; letters, digits, - and _, not a word CLIP knows). "
                                     "Method embedding: required; with full or lora: an extra embedding "
                                     "trained beside, written next to the output (empty: none).")
    embedding_vectors: int = opt(1, "Vectors", "Token vectors the word is made of (more can hold more, 1-8 "
                                 "is usual).", min=1, max=75)
    embedding_init_text: str = opt("*", "Initialize from", "A word or phrase whose token vectors start the "
                                   "embedding (repeated over the vectors).")
    embedding_learning_rate: float = opt(5e-3, "Embedding LR", "Learning rate of the embedding's vectors.",
                                         min=0.0, max=10.0)
    ema: str = opt("off", "EMA", "Keep an exponential moving average of the weights, on the GPU or in CPU "
                   "memory; used for samples and the saved model.", choices=("off", "gpu", "cpu"))
    ema_decay: float = opt(0.999, "EMA decay", "Share of the old average kept each step.", min=0.0, max=1.0)
    noise_offset: float = opt(0.0, "Noise offset", "Adds per-channel offset noise (helps very dark and bright "
                              "images); 0.05-0.1 is typical.", min=0.0, max=1.0)
    min_snr_gamma: float = opt(0.0, "Min-SNR gamma", "Min-SNR loss weighting (5 is typical); 0 turns it off.",
                               min=0.0, max=100.0)
    debiased_estimation: bool = opt(False, "Debiased estimation", "Weight each sample's loss by 1/sqrt(SNR) "
                                    "(v-prediction: 1/(SNR+1)), the SNR capped at 1000, as kohya's "
                                    "debiased_estimation_loss (Yu et al. 2024): less weight on barely noised "
                                    "timesteps. With min-SNR too, both weights multiply, as in kohya.")
    loss_type: str = opt("mse", "Loss", "mse: squared error (the usual); l1: absolute error; huber: pseudo-Huber "
                         "2c(sqrt(d²+c²)-c), like mse for small errors and l1 for large ones, so outliers (bad "
                         "images, odd captions) pull less (Khrulkov et al. 2024); smooth_l1: the same divided by c. "
                         "As kohya's loss_type.", choices=LOSS_TYPES)
    huber_c: float = opt(0.1, "Huber c", "Loss huber and smooth_l1: the delta c where the loss turns from squared "
                         "to linear (kohya's huber_c; 0.1 is kohya's default). With a schedule it is about the value "
                         "at the noisiest timestep.", min=0.0, max=10.0)
    huber_schedule: str = opt("snr", "Huber schedule", "Loss huber and smooth_l1: how c changes with the timestep "
                              "(kohya's huber_schedule). constant: c throughout; exponential: from 1 at timestep 0 "
                              "down to c at 1000; snr: about 1 at low noise (like mse) falling to c as the noise "
                              "grows, the schedule of Khrulkov et al. 2024 (kohya's default).",
                              choices=HUBER_SCHEDULES)
    timestep_distribution: str = opt("uniform", "Timesteps", "How training timesteps are drawn from the range "
                                     "below (OneTrainer's timestep_distribution). uniform: all equally often; "
                                     "logit_normal: sigmoid of a normal draw (Esser et al. 2024, SD3), most in the "
                                     "middle of the range; the plot shows the distribution.",
                                     choices=TIMESTEP_DISTRIBUTIONS)
    timestep_logit_mean: float = opt(0.0, "Logit mean", "Timesteps logit_normal: mean of the normal draw; 0 centres "
                                     "the draws in the range, above 0 favours noisier timesteps (composition), "
                                     "below 0 less noisy ones (detail).", min=-10.0, max=10.0)
    timestep_logit_std: float = opt(1.0, "Logit std", "Timesteps logit_normal: standard deviation of the normal "
                                    "draw; 1 is SD3's, smaller narrows the draws around the mean, above about 1.4 "
                                    "they pile up at both ends instead.", min=0.01, max=10.0)
    min_timestep: int = opt(0, "Min timestep", "Lowest timestep trained on, inclusive (kohya's min_timestep; "
                            "0 = no noise end).", min=0, max=999)
    max_timestep: int = opt(1000, "Max timestep", "Timesteps trained on stay below this, exclusive (kohya's "
                            "max_timestep; 1000 = up to the noisiest, 999). Must be above the min timestep.",
                            min=1, max=1000)
    prediction_type: str = opt("auto", "Prediction", "What the UNet learns to predict. auto: the base model's "
                               "own objective (its scheduler config, file metadata or A1111 .yaml beside it; SD 1.5 "
                               "is epsilon). Choosing the other one retrains the model's objective.",
                               choices=("auto", *PREDICTION_TYPES))
    max_token_length: int = opt(75, "Max tokens", "Caption and sample prompt length in CLIP tokens: 75, 150 or "
                                "225. Longer texts are encoded in 75-token chunks as A1111 and kohya do; words "
                                "past the limit are cut (stats and the run log say which captions).",
                                min=75, max=225)
    skip_nan_steps: int = opt(0, "Skip NaN steps", "How many batches with a NaN or infinite loss may be skipped "
                              "before the run fails; 0 fails at the first.", min=0, max=10**6)
    zero_terminal_snr: bool = opt(False, "Zero terminal SNR", "Rescale the noise schedule to reach pure noise "
                                  "(use with v_prediction).")


@dataclass
class SamplePrompt:
    prompt: str = opt("", "Prompt", "What to draw.", kind="text")
    negative_prompt: str = opt("", "Negative prompt", "What to steer away from.", kind="text")
    seed: int = opt(0, "Seed", "Sample seed; the same seed shows how one image evolves.", min=0, max=2**31 - 1)
    cfg_scale: float = opt(7.0, "CFG scale", "Classifier-free guidance strength.", min=1.0, max=30.0)
    steps: int = opt(20, "Steps", "Sampling steps.", min=1, max=200)
    width: int = opt(512, "Width", "Sample width (multiple of 8).", min=32, max=2048)
    height: int = opt(512, "Height", "Sample height (multiple of 8).", min=32, max=2048)
    sampler: str = opt("euler_a", "Sampler", "diffusers scheduler used for sampling.", choices=SAMPLERS)


@dataclass
class SamplingConfig:
    every: int = opt(100, "Sample every", "How often to sample, in the unit below.", min=1, max=10**7)
    unit: str = opt("steps", "Unit", "Unit of the sampling interval.", choices=INTERVAL_UNITS)
    before_training: bool = opt(False, "Sample before training", "Sample once before the first step.")
    validate_every: int = opt(1, "Validate every", "With a validation concept (concept role validation): how "
                              "often to measure the loss on its images, in the unit below. Also once before the "
                              "first step and at the end.", min=1, max=10**7)
    validate_unit: str = opt("epochs", "Validation unit", "Unit of the validation interval; never measures no "
                             "validation loss.", choices=INTERVAL_UNITS)
    prompts: list[SamplePrompt] = opt(None, "Prompts", "Sample prompts.", factory=list)


@dataclass
class BackupConfig:
    backup_every: int = opt(30, "Backup every", "How often to write a backup (the full training state, to "
                            "resume from), in the unit below.", min=1, max=10**7)
    backup_unit: str = opt("minutes", "Backup unit", "Unit of the backup interval.", choices=INTERVAL_UNITS)
    rolling_backups: int = opt(3, "Keep backups", "Keep the newest N backups and delete older ones; 0 keeps "
                               "all.", min=0, max=10000)
    backup_before_save: bool = opt(True, "Backup at the end", "Write a backup when the run completes or is "
                                   "stopped, before the final save.")
    save_every: int = opt(1, "Save every", "How often to save the model alone (in the output format) under "
                          "workspace/save, in the unit below.", min=1, max=10**7)
    save_unit: str = opt("never", "Save unit", "Unit of the save interval.", choices=INTERVAL_UNITS)
    save_skip_first: int = opt(0, "Skip first saves", "Skip this many periodic saves at the start.", min=0,
                               max=10**7)
    prefix: str = opt("", "File name prefix", "Put in front of backup and save names.")
    resume: str = opt("", "Resume from", "Empty starts fresh; 'latest' continues from the newest complete "
                      "backup in the workspace; or the path of a backup folder.", kind="dir")


@dataclass
class Preset:
    general: GeneralConfig = field(default_factory=GeneralConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    concepts: list[ConceptConfig] = field(default_factory=list)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)


SECTIONS = ("general", "model", "concepts", "training", "sampling", "backup")

# Migrations: MIGRATIONS[n] turns a version-n dict into a version-(n+1) dict. Keep a fixture per entry.
MIGRATIONS: dict[int, typing.Callable[[dict], dict]] = {}


# ---- reading -----------------------------------------------------------------------------------------

def preset_from_dict(data: dict) -> Preset:
    """Migrate, lay over the defaults and validate a preset dict (as read from JSON)."""
    preset = _from_dict(Preset, read_versioned(data, "preset", VERSION, MIGRATIONS))
    problems = validate(preset)
    if problems:
        raise ConfigError(problems[0])
    return preset


def load_preset(path: str | Path) -> Preset:
    """The preset in the JSON file at `path` (fields.read_json_file); ConfigError naming the field and the file."""
    data = read_json_file(path, "preset")  # its own errors name the file
    return in_file(path, lambda: preset_from_dict(data))


# ---- writing -----------------------------------------------------------------------------------------

PATH_KINDS = ("path", "dir", "file")


def portable_preset(preset: Preset) -> Preset:
    """A copy of the preset for files that travel (a saved model's metadata): every path field (metadata kind
    path, dir or file) that is absolute (after ~ is expanded) becomes relative to the workspace when it lies in
    it, else its last part only, so no home folder, image folder or user name leaves with a model. Relative paths
    stay as they are; the workspace itself becomes its last part."""
    out = copy.deepcopy(preset)
    root = Path(preset.general.workspace_dir).expanduser().absolute()

    def portable(value: str) -> str:
        path = Path(value).expanduser()
        if not path.is_absolute():
            return value
        try:
            return str(path.absolute().relative_to(root)) if path.absolute() != root else root.name
        except ValueError:
            return path.name

    def visit(obj) -> None:
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value):
                visit(value)
            elif isinstance(value, list):
                for item in value:
                    if is_dataclass(item):
                        visit(item)
            elif f.metadata.get("kind") in PATH_KINDS and isinstance(value, str) and value:
                setattr(obj, f.name, portable(value))
    visit(out)
    return out


def preset_to_dict(preset: Preset) -> dict:
    return {"version": VERSION, **asdict(preset)}


def preset_to_json(preset: Preset) -> str:
    return json.dumps(preset_to_dict(preset), indent=2) + "\n"


def save_preset(preset: Preset, path: str | Path) -> None:
    atomic_write_text(path, preset_to_json(preset))


# ---- validation --------------------------------------------------------------------------------------

def parse_resolutions(text: str) -> list[int]:
    """'512' or '512,640' -> [512, 640]; raises ValueError with the reason."""
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(f"{part!r} is not a whole number of pixels")
        size = int(part)
        if size < 32 or size > 4096 or size % 8:
            raise ValueError(f"{size} must be a multiple of 8 between 32 and 4096")
        sizes.append(size)
    return sizes


def validate(preset: Preset, check_paths: bool = False) -> list[str]:
    """Every problem of the preset as 'dotted.path: reason'. check_paths also checks that inputs exist."""
    problems = field_problems(preset, "")
    try:
        parse_resolutions(preset.training.resolution)
    except ValueError as e:
        problems.append(f"training.resolution: {e}")
    for i, prompt in enumerate(preset.sampling.prompts):
        for side in ("width", "height"):
            if getattr(prompt, side) % 8:
                problems.append(f"sampling.prompts.{i}.{side}: must be a multiple of 8")
    if preset.training.max_token_length not in MAX_TOKEN_LENGTHS:
        problems.append(f"training.max_token_length: must be 75, 150 or 225, not {preset.training.max_token_length}")
    if preset.training.min_timestep >= preset.training.max_timestep:
        problems.append(f"training.max_timestep: must be above the min timestep {preset.training.min_timestep} "
                        "(the maximum is exclusive: timesteps min to max - 1 are trained)")
    if preset.training.loss_type in ("huber", "smooth_l1") and preset.training.huber_c <= 0:
        problems.append(f"training.huber_c: must be above 0 for loss {preset.training.loss_type}")
    if preset.training.zero_terminal_snr and preset.training.prediction_type == "epsilon":
        problems.append("training.zero_terminal_snr: needs prediction v_prediction (an epsilon model cannot "
                        "predict at zero SNR)")
    problems += _precision_problems(preset.training)
    problems += _optimizer_problems(preset.training)
    problems += _method_problems(preset)
    problems += _role_problems(preset)
    for i, c in enumerate(preset.concepts):
        if c.masks == "file" and (not c.mask_suffix or any(ch in c.mask_suffix for ch in "/\\")):
            problems.append(f"concepts.{i}.mask_suffix: masks from files need a suffix without / or \\ "
                            "(OneTrainer's -masklabel)")
    if check_paths:
        problems += _path_problems(preset)
    return problems


def _method_problems(preset: Preset) -> list[str]:
    """What training.method needs: something to train; a LoRA or an embedding written as a .safetensors file; a
    new word that CLIP does not know yet."""
    from trainer.data.vocab import placeholder_problem
    t, model, problems = preset.training, preset.model, []
    if t.method != "embedding" and not (t.train_unet or t.train_text_encoder):
        problems.append("training.train_unet: nothing to train (turn on the UNet or the text encoder)")
    if t.method == "embedding" or t.embedding_placeholder:
        reason = placeholder_problem(t.embedding_placeholder)
        if reason:
            problems.append(f"training.embedding_placeholder: {reason}" + (
                " (method embedding trains a new word)" if not t.embedding_placeholder else ""))
        if not t.embedding_init_text.strip():
            problems.append("training.embedding_init_text: give a word or phrase to start the embedding from")
    if t.method != "full" and Path(model.output_path).suffix.lower() != ".safetensors":
        problems.append(f"model.output_path: a {t.method} is written as one .safetensors file; end the name in "
                        ".safetensors")
    for name in ("lora_alpha", "lora_conv_alpha"):
        if t.method == "lora" and getattr(t, name) <= 0:
            problems.append(f"training.{name}: must be above 0 (the adapter's output is scaled by alpha / rank; "
                            "alpha = rank scales by 1)")
    if t.method == "lora" and t.fused_backward:
        problems.append("training.fused_backward: for a full fine-tune only (a LoRA's few weights need no fused "
                        "back pass)")
    if t.method != "lora" and model.lora_weights:
        problems.append("model.lora_weights: a LoRA to start from needs method lora")
    if t.method == "lora" and model.merged_output_path and _inside(model.merged_output_path, model.output_path,
                                                                     False):
        problems.append("model.merged_output_path: the same path as the LoRA itself; choose another")
    return problems


def _role_problems(preset: Preset) -> list[str]:
    """Regularization and validation concepts accompany training: a preset with either needs an enabled concept
    of role train."""
    enabled = [(i, c) for i, c in enumerate(preset.concepts) if c.enabled]
    if not enabled or any(c.role == "train" for _, c in enabled):
        return []
    return [f"concepts.{i}.role: concept {c.name!r} is {c.role} and no enabled concept has role train: "
            f"{c.role} images only accompany the images trained on; set a concept's role to train"
            for i, c in enabled[:1]]


def optimizer_numbers(t: TrainingConfig, name: str) -> tuple[float, ...]:
    """training.betas or training.eps (`name`) as numbers: the preset's ('0.9, 0.999' -> (0.9, 0.999)), or when
    empty the optimizer's own (OPTIMIZER_DEFAULTS; () for an optimizer that reads none). Raises ValueError naming a
    part that is not a number."""
    text = getattr(t, name).strip()
    if not text:
        return OPTIMIZER_DEFAULTS.get(t.optimizer, {}).get(name, ())
    values = []
    for part in text.split(","):
        try:
            values.append(float(part))
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a number (separate several with commas)") from None
    return tuple(values)


def _optimizer_problems(t: TrainingConfig) -> list[str]:
    """The optimizer's own settings (training.betas and eps: as many as it takes, in range) and what it cannot do:
    a schedule-free optimizer follows no decaying schedule and keeps its own average (no EMA on top); Prodigy's
    step size needs all gradients at once (bf16 weights with stochastic rounding are stepped in buckets)."""
    problems, defaults = [], OPTIMIZER_DEFAULTS.get(t.optimizer, {})
    numbers: dict[str, tuple[float, ...]] = {}
    for name, wanted in defaults.items():
        try:
            values = optimizer_numbers(t, name)
        except ValueError as e:
            problems.append(f"training.{name}: {e}")
            continue
        if len(values) != len(wanted):
            problems.append(f"training.{name}: {t.optimizer} takes {len(wanted)} ({','.join(map(str, wanted))} "
                            f"are its own), not {len(values)}; empty uses its own")
        elif name == "betas" and not all(0.0 <= b < 1.0 for b in values):
            problems.append("training.betas: each beta must be at least 0 and below 1")
        elif name == "eps" and not all(0.0 < e < 1.0 for e in values):
            problems.append("training.eps: each eps must be above 0 and below 1")
        else:
            numbers[name] = values
    beta1 = numbers.get("betas", (None,))[0]
    if t.optimizer in SCHEDULE_FREE:
        if t.lr_scheduler not in ("constant", "constant_with_warmup"):
            problems.append(f"training.lr_scheduler: {t.optimizer} needs constant: it averages its weights instead "
                            "of following a decaying schedule (warm-up: warmup steps)")
        if t.ema != "off":
            problems.append(f"training.ema: {t.optimizer} keeps its own average of the weights, which samples and "
                            "saves use; an EMA would replace it (turn EMA off)")
        if beta1 == 0:
            problems.append(f"training.betas: {t.optimizer} needs beta1 above 0 (its average is the weights it "
                            "steps extrapolated by 1/beta1)")
    if t.optimizer == "ademamix" and t.ademamix_t_alpha_beta3 > 0 and beta1 == 0:
        problems.append("training.betas: ademamix needs beta1 above 0 when t_alpha_beta3 warms beta3 up from it")
    if (t.optimizer in WHOLE_STEP_OPTIMIZERS and t.method == "full" and t.weight_dtype == "bfloat16"
            and t.stochastic_rounding):
        problems.append(f"training.weight_dtype: bfloat16 weights with stochastic rounding are stepped in buckets, "
                        f"which {t.optimizer} cannot do (it estimates its step size over all gradients at once); "
                        "use float32 weights or another optimizer")
    return problems


def _precision_problems(t: TrainingConfig) -> list[str]:
    problems = []
    if t.weight_dtype == "bfloat16" and t.mixed_precision != "bf16":
        problems.append("training.weight_dtype: bfloat16 weights need mixed precision bf16 (the frozen parts "
                        "and the samples then run in bf16 too)")
    if t.fused_backward:
        for wrong, reason in ((t.gradient_accumulation_steps > 1, "needs gradient accumulation 1 (each step "
                               "happens during the backward pass)"),
                              (t.max_grad_norm > 0, "needs max grad norm 0 (clipping needs every gradient at "
                               "once, which the fused back pass never holds)"),
                              (t.optimizer in WHOLE_STEP_OPTIMIZERS, f"does not work with {t.optimizer} (its step "
                               "size is estimated over all gradients at once)"),
                              (t.mixed_precision == "fp16", "does not work with fp16 (the grad scaler needs "
                               "every gradient); use bf16")):
            if wrong:
                problems.append(f"training.fused_backward: {reason}")
    return problems


DEMO_PARTS = ("images", "model")  # what trainer.tools.demo.make_demo builds under general.demo_dir


def built_by_demo(preset: Preset, path: str) -> bool:
    """Whether `path` is a part of the demo (general.demo_dir/images or /model) that Start builds: a missing
    folder there is not a mistake."""
    if not preset.general.demo_dir or not path:
        return False
    demo = Path(preset.general.demo_dir).expanduser().absolute()
    return Path(path).expanduser().absolute() in [demo / part for part in DEMO_PARTS]


def _inside(path: str, folder: str, below: bool) -> bool:
    """Whether `path` is `folder`, or (below) any folder under it."""
    path_, folder_ = Path(path).expanduser().resolve(), Path(folder).expanduser().resolve()
    return path_ == folder_ or (below and folder_ in path_.parents)


def _path_problems(preset: Preset) -> list[str]:
    problems = []
    if not preset.model.base_model:
        problems.append("model.base_model: no base model chosen")
    elif not Path(preset.model.base_model).expanduser().exists() and not built_by_demo(preset,
                                                                                       preset.model.base_model):
        problems.append(f"model.base_model: {preset.model.base_model} does not exist")
    if preset.model.base_config and not Path(preset.model.base_config).expanduser().is_dir():
        problems.append(f"model.base_config: {preset.model.base_config} is not a folder")
    if preset.model.lora_weights and not Path(preset.model.lora_weights).expanduser().is_file():
        problems.append(f"model.lora_weights: {preset.model.lora_weights} is not a file (choose a LoRA .safetensors)")
    enabled = [c for c in preset.concepts if c.enabled]
    if not enabled:
        problems.append("concepts: no enabled concept to train on")
    for i, concept in enumerate(preset.concepts):
        if not concept.enabled:
            continue
        if not concept.path:
            problems.append(f"concepts.{i}.path: no folder chosen for concept {concept.name!r}")
        elif Path(concept.path).expanduser().is_file():
            problems.append(f"concepts.{i}.path: {concept.path} of concept {concept.name!r} is a file; choose "
                            "the folder that holds the images")
        elif not Path(concept.path).expanduser().is_dir() and not built_by_demo(preset, concept.path):
            problems.append(f"concepts.{i}.path: folder {concept.path} of concept {concept.name!r} does not exist")
        if concept.path and _inside(preset.general.workspace_dir, concept.path, concept.include_subdirectories):
            problems.append(f"general.workspace_dir: {preset.general.workspace_dir} lies in the folder of concept "
                            f"{concept.name!r}: the run's sample images would be trained on; choose a workspace "
                            "outside the image folders")
        if concept.caption_source == "single" and not concept.caption.strip():
            problems.append(f"concepts.{i}.caption: caption source 'single' needs a caption")
    return problems


