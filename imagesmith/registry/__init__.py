"""The OCI distribution API: blobs and manifests by digest, credentials, artifacts."""
