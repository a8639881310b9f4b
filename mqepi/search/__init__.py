"""The energy-aware per-layer search: probes, models, the optimiser."""
