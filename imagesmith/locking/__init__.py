"""Resolving a spec into a lock: base digest, apt closure, Python pins."""
