"""regindex: index Docker Distribution registry storage into SQL and track its integrity over time."""

__version__ = "0.1.0"
