"""STAND-IN component images (test fixtures)."""
