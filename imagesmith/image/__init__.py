"""Image files: OCI layouts and archives, and the canonical form of an image (its digest
depends on the lock alone)."""
