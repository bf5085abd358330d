"""Converters: a :class:`~longrope_export.spec.LongRoPESpec` into each runtime's own form."""
