"""matplotlib (the `report` extra) set up for files, not windows."""

from __future__ import annotations

import io
from types import ModuleType


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend: plots render without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    pyplot().close(figure)
    return buffer.getvalue()
