"""HTTomo's image tail in a scan's output: the images written, or why there are none.

The runner (:class:`~streamer.run.ranks.RankedReconstruction`) asks for it when the
pipeline has ``save_to_images`` (:func:`streamer.pipeline.images.image_tail`). On one
rank :func:`with_images` writes the images of the closed volume; on R ranks each rank
wrote its own slices' and rank 0 adds their count with :func:`images_written` (ADR 0020).
Either way the output carries them (field, run report figure, terminal line), or a line
that says why none were written: nothing is lost silently.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from streamer.errors import StreamerError
from streamer.pipeline.images import ImageTail, image_folder, write_images
from streamer.run.output import ScanOutput

__all__ = ["images_written", "no_images", "with_images"]


def with_images(output: ScanOutput, tail: ImageTail, output_format: str, *,
                per_scan: bool) -> ScanOutput:
    """One rank: the images of the closed volume
    (:func:`~streamer.pipeline.images.write_images`); a volume with errors gets none,
    said; an image that cannot be written makes the output incomplete with the reason."""
    assert output.path is not None
    if output.error is not None:
        return no_images(output, image_folder(output.path, output_format, tail,
                                              per_scan=per_scan))
    try:
        folder, count = write_images(output.path, output_format, tail, per_scan=per_scan)
    except StreamerError as error:
        return replace(output, complete=False, error=str(error),
                       notes=(*output.notes, f"save_to_images: {error}"))
    return images_written(output, folder, count)


def no_images(output: ScanOutput, folder: Path) -> ScanOutput:
    """``output`` of a volume with errors: no images, and a line that says so."""
    note = f"save_to_images: no images: the volume has errors ({folder} not written)"
    return replace(output, notes=(*output.notes, note))


def images_written(output: ScanOutput, folder: Path, count: int) -> ScanOutput:
    """``output`` with its images: the field, the JSON report's figure, a terminal line."""
    figures = {**output.figures, "images": {"folder": str(folder), "count": count}}
    return replace(output, images=(folder, count), figures=figures,
                   notes=(*output.notes, f"save_to_images: {count} TIFFs in {folder}"))
