"""Container images: references, cosign signatures, podman's store as its files
hold it, pulling and verifying by digest."""
