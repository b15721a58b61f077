"""Pipelines: YAML configuration, block planning (later: scheduler, workers)."""
