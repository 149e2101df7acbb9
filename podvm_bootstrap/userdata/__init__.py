"""The untrusted input: user-data from the metadata service or cidata, its
cloud-config and initdata, and provisioning its files."""
