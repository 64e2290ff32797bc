"""Open the SeaChange window: python -m app [--preset PATH]."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="Fine-tune Stable Diffusion 1.5: the window.")
    parser.add_argument("--preset", help="preset file to open (default: presets/demo.json)")
    args = parser.parse_args(argv)
    from app.window import Window
    window = Window(args.preset)
    window.mainloop()
    for session in window.sessions():  # closed while stopping: give each worker a moment to finish cleanly
        session.stop()
    for session in window.sessions():
        session.join(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
