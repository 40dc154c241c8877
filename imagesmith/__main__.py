"""`python -m imagesmith`: the command, as the console script runs it (Slurm build tasks use it)."""

from imagesmith.cli import main

main()
