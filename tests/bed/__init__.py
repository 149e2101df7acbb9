"""The project's test bed: stand-in images, a loopback registry, the pod VM
image booted under systemd-nspawn. See README.md here."""
