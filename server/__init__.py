"""SplitASR server: one frozen speech backbone, many per-user adapters."""

__version__ = "0.1.0"
