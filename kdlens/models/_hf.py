"""Quiet transformers' per-call progress bars in kdlens's own loads and saves."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["quiet_progress"]


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Silence transformers' progress bars ("Loading weights", "Writing model shards") inside the block.

    kdlens loads and saves many small models (a lab sweep: several per run); a bar per call buries
    the lines that matter. The previous setting is restored on exit.
    """
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
