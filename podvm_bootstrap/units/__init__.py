"""systemd: the generated units (quoting, start gates) and the D-Bus client that starts them."""
