"""The tools around training: demo, benchmark, data generation, comparison grids, captioning, the queue, memory
estimates. Must not touch the UI."""
