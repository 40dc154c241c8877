"""Every input a lock pins, fetched on the host and checked: .debs, wheels, the
venv, the build context, the input archive."""
