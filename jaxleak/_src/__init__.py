"""Private helpers shared across jaxleak. Not part of the public API."""
