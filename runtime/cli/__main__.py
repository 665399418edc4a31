"""``python -m asymvq.cli``: the console entry point."""
from .app import main

main()
