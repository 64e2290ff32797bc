"""Window benchmark: time to first paint, and the longest Tk-loop stall while the demo trains (prints JSON)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EPILOG = ("Runs on a virtual display when $DISPLAY is unset (needs Xvfb). First paint: from before a fresh Python "
          "process starts until the window is mapped and its first idle redraw ran (median of 3). Stall: the "
          "longest gap beyond a 10 ms heartbeat of the Tk loop (under mainloop) while the tiny demo trains; "
          "stalls over 100 ms are listed with the run's status at the time.")

PAINT_CHILD = """
import sys, time
from app.window import Window
w = Window()
def painted():
    print(time.time(), w.winfo_ismapped(), flush=True)
    w.after(10, w.close_now)
w.after_idle(lambda: w.after(0, painted))  # runs after the first layout and redraw
w.mainloop()
"""


def first_paint() -> float:
    """Seconds from starting a fresh interpreter to the painted window (median of three)."""
    times = []
    for _ in range(3):
        start = time.time()
        out = subprocess.run([sys.executable, "-c", PAINT_CHILD], cwd=ROOT, capture_output=True, text=True,
                             timeout=120, env={**os.environ, "SEACHANGE_CONFIG_DIR": tempfile.mkdtemp()})
        if out.returncode != 0:
            raise SystemExit(out.stderr)
        painted_at, mapped = out.stdout.split()[:2]
        assert mapped == "1", "the window was not mapped"
        times.append(float(painted_at) - start)
    return sorted(times)[1]


def train_stalls(steps: int, workdir: Path) -> dict:
    """Train the demo from the window under mainloop(); measure the Tk loop's heartbeat gaps."""
    sys.path.insert(0, str(ROOT))
    from app.recent import DEFAULT_PRESET
    from app.window import Window
    from trainer.config import load_preset
    from trainer.fields import set_value

    preset = load_preset(DEFAULT_PRESET)
    for key, value in {
        "general.demo_dir": str(workdir / "demo"), "model.base_model": str(workdir / "demo" / "model"),
        "concepts.0.path": str(workdir / "demo" / "images"), "general.workspace_dir": str(workdir / "ws"),
        "general.cache_dir": str(workdir / "ws" / "cache"), "general.tensorboard": "false",
        "model.output_path": str(workdir / "ws" / "model.safetensors"), "training.max_steps": str(steps),
        "sampling.every": str(max(1, steps // 3)), "sampling.unit": "steps",
    }.items():
        set_value(preset, key, value)
    window = Window(preset=preset)
    beats: list[float] = []
    heartbeat_ms = 10
    stalls: list[tuple[float, float, str]] = []

    def beat():
        now = time.perf_counter()
        if beats and now - beats[-1] > 0.1:  # note what the run was doing during each stall over 100 ms
            stalls.append((round(now - start, 1), round((now - beats[-1]) * 1000 - heartbeat_ms, 1),
                           window.bottom.status_label.cget("text")))
        beats.append(now)
        if not window.closed:
            window.after(heartbeat_ms, beat)

    finished = {}

    def run_finished(event, original=window.run_finished):
        original(event)
        finished["event"] = event
        window.after(200, window.quit)

    window.runner.on_finished = run_finished
    window.after(500, lambda: (window.start() or window.quit(), beat()))
    start = time.perf_counter()
    window.mainloop()
    wall = time.perf_counter() - start
    gaps = sorted((b - a) * 1000 - heartbeat_ms for a, b in zip(beats, beats[1:]))
    event = finished.get("event")
    result = {
        "outcome": event.outcome if event else "did not start: " + "; ".join(window.problems),
        "message": event.message if event else "",
        "steps": window.run_tab.chart.steps[-1] if window.run_tab.chart.steps else 0,
        "samples": len(window.run_tab.gallery.samples),
        "wall_s": round(wall, 2),
        "heartbeats": len(beats),
        "longest_stall_ms": round(gaps[-1], 1) if gaps else None,
        "p99_stall_ms": round(gaps[int(len(gaps) * 0.99)], 1) if gaps else None,
        "median_stall_ms": round(gaps[len(gaps) // 2], 1) if gaps else None,
        "stalls_over_100ms": [{"at_s": t, "ms": ms, "status": status} for t, ms, status in stalls],
    }
    window.close_now()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, epilog=EPILOG)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of the demo run")
    parser.add_argument("--no-train", action="store_true", help="only measure the first paint")
    parser.add_argument("--workdir", type=Path, help="where the demo and the run go (default: a temp dir)")
    args = parser.parse_args()
    display = None
    if not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display
        display = Display(size=(1440, 900), color_depth=24).start()
    os.environ.setdefault("SEACHANGE_CONFIG_DIR", tempfile.mkdtemp())
    try:
        result = {"first_paint_s": round(first_paint(), 3)}
        if not args.no_train:
            workdir = args.workdir or Path(tempfile.mkdtemp(prefix="seachange-bench-"))
            result["train"] = train_stalls(args.steps, workdir)
        print(json.dumps(result, indent=2))
    finally:
        if display is not None:
            display.stop()


if __name__ == "__main__":
    main()
