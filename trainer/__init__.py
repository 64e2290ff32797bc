"""SeaChange training engine: fine-tunes Stable Diffusion 1.5. Must not touch the UI (no tkinter here)."""
