"""The Containerfile: a pure function of the lock."""
