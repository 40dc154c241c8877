"""The spec, the lock, build and push records, image references, labels."""
