"""podvm-bootstrap: boots peer-pods VM components from verified container images."""

__version__ = "0.1.0"
