"""Attestation: the TEE, the TPM, the measured launch's event log and the
claims a relying party derives from it."""
