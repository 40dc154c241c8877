"""imagesmith: a lab's env.toml in, a reproducible image and the job that runs it out."""

__version__ = "0.7.0"
