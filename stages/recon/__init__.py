"""Reconstruction-side helpers: centre-of-rotation estimation (:mod:`.rotation`)."""

from stages.recon.rotation import CorResult, find_center_pair, find_center_vo

__all__ = ["CorResult", "find_center_pair", "find_center_vo"]
