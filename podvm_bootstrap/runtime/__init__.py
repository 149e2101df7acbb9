"""`run`: the boot's stages (read the baked files, fetch, provision, plan),
the head start, the daemon that pulls, measures, installs and starts, its
supervision, probes, sd_notify and state."""
