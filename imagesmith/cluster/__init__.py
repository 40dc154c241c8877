"""Builds where the jobs run: Slurm job arrays and Kubernetes Jobs."""
