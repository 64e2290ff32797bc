"""The training tab: optimizer and learning rate, schedule, captions and text encoder, UNet, noise and loss, EMA,
precision."""
from __future__ import annotations

from app.tabs.common import Tab, scroll_area

GROUPS = [
    ("Optimizer", ["optimizer", "learning_rate", "weight_decay", "max_grad_norm"]),
    ("Learning-rate schedule", ["lr_scheduler", "lr_warmup_steps"]),
    ("Length and batch", ["epochs", "max_steps", "batch_size", "gradient_accumulation_steps", "resolution"]),
    ("Captions and text encoder", ["max_token_length", "train_text_encoder", "text_encoder_learning_rate",
                                   "text_encoder_stop_epoch"]),
    ("UNet", ["train_unet", "compile"]),
    ("Noise and loss", ["prediction_type", "noise_offset", "min_snr_gamma", "zero_terminal_snr"]),
    ("EMA", ["ema", "ema_decay"]),
    ("Precision and memory", ["mixed_precision", "weight_dtype", "stochastic_rounding", "fused_backward",
                              "gradient_checkpointing"]),
]


class TrainingTab(Tab):
    title = "training"

    def steps(self):
        yield from self.grouped(scroll_area(self.frame), "training", GROUPS, columns=3)
