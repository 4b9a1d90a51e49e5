"""``python -m timerctl`` runs the CLI."""

from timerctl.cli import main

main()
