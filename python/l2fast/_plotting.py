"""matplotlib for the command line's plots: imported on demand, drawing off-screen."""
from __future__ import annotations


def pyplot(who, extra):
    """matplotlib.pyplot on the Agg backend; without matplotlib, exits saying which extra brings it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(f"{who} needs matplotlib: pip install \"l2fast[{extra}]\" ({exc})")
    return plt


def save(plt, fig, path):
    """Writes the figure as a PNG at `path` (laid out, 100 dpi) and frees it; returns path."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
