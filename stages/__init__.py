"""Processing stages: pure functions over 3-D blocks (filled in by the stages issue)."""
