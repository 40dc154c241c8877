"""What an image holds and how it was made, told from its lock: SBOMs and provenance.

`sbom` writes SPDX 2.3 and CycloneDX 1.6 documents, `provenance` an in-toto Statement
with a SLSA Provenance v1 predicate (optionally in a signed DSSE envelope). Both are
pure functions of their inputs: no engine, no network, no clock.
"""
