"""The training tab's timestep plot: the distribution the training timesteps are drawn from (training.
timestep_distribution, timestep_logit_mean/std, min_timestep/max_timestep), redrawn as those fields change, as
OneTrainer shows its timestep distribution beside the settings (modules/ui/TimestepDistributionWindow). Torch-free:
the probabilities are computed exactly with math.erfc, and tests/test_loss_control.py checks that the engine's
draws (trainer.train.losses.sample_timesteps) follow them."""
from __future__ import annotations

import math
import tkinter as tk
import tkinter.font as tkfont
from typing import Any

from app.run_widgets import AXIS_TEXT, CHART_BG, GRID, SMOOTH, format_tick
from app.widgets import MUTED, fit_text

NUM_TIMESTEPS = 1000  # SD 1.5's training timesteps (its scheduler's num_train_timesteps)
FILL = "#2d4a6e"  # the area under the curve: SMOOTH darkened towards CHART_BG


def _normal_cdf(x: float) -> float:
    """P(N(0, 1) <= x); exact at -inf and +inf."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def timestep_probabilities(distribution: str, logit_mean: float = 0.0, logit_std: float = 1.0,
                           min_timestep: int = 0, max_timestep: int = NUM_TIMESTEPS,
                           num_timesteps: int = NUM_TIMESTEPS) -> list[float]:
    """P(t = k) for every timestep k in 0 .. num_timesteps - 1 (a list that sums to 1), as
    trainer.train.losses.sample_timesteps draws them: the range [min_timestep, max_timestep), minimum inclusive and
    maximum exclusive (kohya's min_timestep/max_timestep).

    "uniform": 1 / (max - min) on the range. "logit_normal": t = floor(min + sigmoid(n) (max - min)) with
    n ~ Normal(logit_mean, logit_std), so P(t = k) = F((k + 1 - min) / W) - F((k - min) / W), W = max - min, with
    F(q) = Phi((logit(q) - logit_mean) / logit_std) the logit-normal CDF (F(0) = 0, F(1) = 1). Raises ValueError
    for an unknown distribution, an empty range or one outside [0, num_timesteps), or logit_std <= 0 (the problems
    config.validate names on the fields).
    """
    if not 0 <= min_timestep < max_timestep <= num_timesteps:
        raise ValueError(f"the min timestep ({min_timestep}) must be below the max timestep ({max_timestep}), "
                         f"within 0 to {num_timesteps}")
    width = max_timestep - min_timestep
    probabilities = [0.0] * num_timesteps
    if distribution == "uniform":
        for k in range(min_timestep, max_timestep):
            probabilities[k] = 1.0 / width
        return probabilities
    if distribution != "logit_normal":
        raise ValueError(f"unknown timestep distribution {distribution!r}")
    if not logit_std > 0:
        raise ValueError(f"the logit std must be above 0, not {logit_std}")

    def cdf(q: float) -> float:
        if q <= 0.0:
            return 0.0
        if q >= 1.0:
            return 1.0
        return _normal_cdf((math.log(q / (1.0 - q)) - logit_mean) / logit_std)

    below = 0.0
    for k in range(min_timestep, max_timestep):
        upto = cdf((k + 1 - min_timestep) / width)
        probabilities[k] = max(0.0, upto - below)
        below = upto
    return probabilities


def describe(probabilities: list[float]) -> str:
    """One line on a distribution over timesteps: its mean and the range holding its middle 90%."""
    mean = sum(k * p for k, p in enumerate(probabilities))
    low = high = None
    total = 0.0
    for k, p in enumerate(probabilities):
        total += p
        if low is None and total >= 0.05:
            low = k
        if high is None and total >= 0.95:
            high = k
    return f"mean {mean:.0f}, 90% in {low}–{high}"


class TimestepPlot(tk.Canvas):
    """The density of the training timesteps over 0 .. 999 (low noise on the left, pure noise on the right), as a
    filled curve in the loss chart's colours (a dashed line marks a uniform draw over all timesteps), with a line
    saying its mean and middle 90%. `show(training)` reads
    the fields of a TrainingConfig and redraws when they changed; fields that give no distribution (min not below
    max) show why instead. `probabilities` and `message` are what is drawn."""

    MARGIN = (10, 22, 10, 20)  # left, top (the line of text), right, bottom (the timestep axis)

    def __init__(self, master, height: int = 120, **kw):
        super().__init__(master, bg=CHART_BG, highlightthickness=0, height=height, width=200, **kw)
        self.key: tuple | None = None
        self.probabilities: list[float] = []
        self.message = ""
        self.font: tkfont.Font | None = None  # made at the first draw, for this canvas's Tk
        self.bind("<Configure>", lambda _e: self.redraw())

    def show(self, training: Any) -> None:
        """Show the distribution of `training` (timestep_distribution, timestep_logit_mean, timestep_logit_std,
        min_timestep, max_timestep); nothing is redrawn when none of them changed."""
        key = (training.timestep_distribution, training.timestep_logit_mean, training.timestep_logit_std,
               training.min_timestep, training.max_timestep)
        if key == self.key:
            return
        self.key = key
        try:
            self.probabilities = timestep_probabilities(*key)
            name = "uniform" if key[0] == "uniform" else f"logit-normal({key[1]:g}, {key[2]:g})"
            self.message = f"{name}: {describe(self.probabilities)}"
        except (ValueError, TypeError) as e:
            self.probabilities, self.message = [], f"No distribution: {e}"
        self.redraw()

    def columns(self, pixels: int) -> list[float]:
        """The density averaged over each of `pixels` equal slices of 0 .. NUM_TIMESTEPS, relative to a uniform
        draw over all timesteps (1 = as often as uniform)."""
        n = len(self.probabilities)
        out = []
        for i in range(pixels):
            a, b = i * n // pixels, max((i + 1) * n // pixels, i * n // pixels + 1)
            out.append(sum(self.probabilities[a:b]) / (b - a) * n)
        return out

    def redraw(self) -> None:
        """Draw the line of text, the frame, the timestep axis (0 to 1000) and the curve at the canvas's size."""
        self.delete("all")
        w, h = self.winfo_width(), self.winfo_height()
        left, top, right, bottom = self.MARGIN
        x0, y0, x1, y1 = left, top, w - right, h - bottom
        if x1 - x0 < 40 or y1 - y0 < 20:
            return
        if self.font is None:
            self.font = tkfont.Font(root=self, family="TkDefaultFont", size=9)
        self.create_text(x0, top / 2 + 1, text=fit_text(self.font, self.message, x1 - x0), anchor="w",
                         font=self.font, fill=AXIS_TEXT if self.probabilities else MUTED)
        self.create_rectangle(x0, y0, x1, y1, outline=GRID)
        for t in (0, 250, 500, 750, NUM_TIMESTEPS):
            x = x0 + t / NUM_TIMESTEPS * (x1 - x0)
            self.create_line(x, y1, x, y1 + 3, fill=GRID)
            self.create_text(x, y1 + 4, text=format_tick(t), anchor="n" if 0 < t < NUM_TIMESTEPS else
                             ("nw" if t == 0 else "ne"), fill=AXIS_TEXT, font=("TkDefaultFont", 8))
        if not self.probabilities:
            return
        heights = self.columns(max(1, int(x1 - x0)))
        top_value = max(max(heights), 1.0) * 1.08  # uniform over everything stays below the top
        uniform_y = y1 - (y1 - y0) / top_value
        self.create_line(x0, uniform_y, x1, uniform_y, fill=GRID, dash=(3, 3))
        self.create_text(x1 - 3, uniform_y - 1, text="uniform", anchor="se", fill=MUTED, font=("TkDefaultFont", 8))
        points = [x0, y1]
        for i, value in enumerate(heights):
            points += (x0 + i + 0.5, y1 - value / top_value * (y1 - y0))
        points += (x1, y1)
        self.create_polygon(*points, fill=FILL, outline="")
        self.create_line(*points[2:-2], fill=SMOOTH, width=2)
