"""``python -m mqepi`` runs the CLI."""

from mqepi.cli import main

main()
