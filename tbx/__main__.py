"""``python -m tbx …`` (also what ``torchrun -m tbx train …`` runs)."""

from tbx.cli.main import run

run()
