"""What runs the image: Kubernetes Jobs and Pods, Slurm batch scripts."""
