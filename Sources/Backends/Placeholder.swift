// Backends.
