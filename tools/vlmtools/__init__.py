"""Helpers shared by vlmd's Python tools (tools/*.py)."""
