"""The window's tabs: one module per preset section (general, model, concepts, training, sampling, backup), the run
view (run), the tools (generate-data) and the results (compare grids); with what the tabs share (common, and
tool_base for the tool tabs) and the concepts tab's statistics panel (concept_stats) and caption editor."""
