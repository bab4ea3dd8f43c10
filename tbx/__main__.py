"""``python -m tbx …`` (also what ``torchrun -m tbx train …`` runs)."""

from tbx.cli.entry import run

run()
