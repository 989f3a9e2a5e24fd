"""CLI commands of the branch, attribution, compare and digits views (registered on import)."""

from __future__ import annotations
