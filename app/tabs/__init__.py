"""The window's tabs: one module per preset section, plus the run view."""
