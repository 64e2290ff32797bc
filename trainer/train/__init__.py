"""The training: the loop, its step, losses, optimizers, EMA, validation, samples, saves, backups and resume. Must
not touch the UI."""
