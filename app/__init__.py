"""SeaChange window (CustomTkinter): edits the preset and shows a training run as it happens."""
