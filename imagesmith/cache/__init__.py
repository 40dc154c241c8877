"""Imagesmith's cache: integrity checks, scratch folders, garbage collection."""
