"""``python -m longrope_export``."""

from .cli import main

main()
