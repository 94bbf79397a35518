"""A discrete-event simulator that drives the real scheduler core with a recorded or synthetic workload."""
