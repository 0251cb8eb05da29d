"""Render steps: one small function per module, each ``step(ctx) -> None``.

The order they run in is written out once, in ``magickd/pipeline.py``.
"""
