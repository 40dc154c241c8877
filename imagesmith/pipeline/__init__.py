"""The stages put together: build (context, engine, canonical image, the shared
system stage, substitution), push, verify, unpack, the Debian base, many specs."""
