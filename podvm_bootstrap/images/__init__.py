"""Container images, knowing nothing of the baked files: references, cosign
signatures, podman's store as its own files hold it, pulling and verifying by
digest, and an image tree's store at build time."""
