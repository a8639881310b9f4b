"""The sweep: every (configuration, repeat) of a model measured, resumably, and the
planner's forecast of its wall time and energy."""
