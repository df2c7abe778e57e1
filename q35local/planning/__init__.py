"""Where a model goes on a machine and how fast it runs: the planner, the speed model, calibration."""
