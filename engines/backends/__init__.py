"""zsad: engines/backends."""
