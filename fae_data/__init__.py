"""fae-data: hot-embedding-aware data preparation for recommendation training (FAE)."""

from __future__ import annotations

__version__ = "0.1.0"
