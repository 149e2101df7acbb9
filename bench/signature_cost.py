#!/usr/bin/env python3
"""What signature verification adds to a start: run with the pod VM's python3
in its tree (booted, or a read-only overlay of the image's layers entered with
chroot); prints one JSON object (milliseconds).

- import_ms: importing cryptography's primitives (once per daemon process;
  not paid when policy.yaml has no keys);
- policy_ms: reading the baked policy.yaml with its keys (PEM → key objects);
- verify_ms: verifying the stored signatures of N images (the baked defaults,
  cycled to N) as images.py does at every start: images.json and the
  signature item read, split, ECDSA P-256 verified, claims checked.

    python3 signature_cost.py [--root /] [--images 5] [--reps 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def median_ms(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {"median": round(statistics.median(ms), 3), "min": round(min(ms), 3), "max": round(max(ms), 3),
            "n": len(ms)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/"))
    parser.add_argument("--store", default="/var/lib/containers/storage")
    parser.add_argument("--driver", default="vfs")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()

    started = time.perf_counter()
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: F401
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: F401
    import_s = time.perf_counter() - started

    from podvm_bootstrap.common.paths import Paths
    from podvm_bootstrap.config.policy import load_policy
    from podvm_bootstrap.images.imageref import parse_reference
    from podvm_bootstrap.images.signature_store import check_signature

    paths = Paths.build(root=str(args.root))
    policy_samples = []
    for _ in range(args.reps):
        t = time.perf_counter()
        policy = load_policy(paths.policy_yaml, paths.root)
        policy_samples.append(time.perf_counter() - t)

    store = paths.rooted(args.store)
    images = json.loads((store / f"{args.driver}-images" / "images.json").read_text())
    by_repo = {}
    for image in images:
        for name in image.get("names") or []:
            if "@sha256:" in name:
                by_repo[name.split("@", 1)[0]] = (image["id"], parse_reference(name))
    checks = []
    for name, rules in policy.components.items():
        trust = policy.trust_for(name)
        found = next((v for repo, v in by_repo.items() if repo.endswith("/" + name)), None)
        if trust is not None and found is not None:
            checks.append((found[0], found[1], trust))
    if not checks:
        print("signature_cost.py: no signed component image found in the store", file=sys.stderr)
        return 1
    checks = (checks * args.images)[:args.images]
    verify_samples = []
    for _ in range(args.reps):
        t = time.perf_counter()
        for image_id, ref, trust in checks:
            check_signature(store, args.driver, image_id, ref, trust)
        verify_samples.append(time.perf_counter() - t)

    import cryptography
    print(json.dumps({"cryptography": cryptography.__version__, "python": sys.version.split()[0],
                      "images": args.images, "import_ms": round(import_s * 1000, 3),
                      "policy_ms": median_ms(policy_samples), "verify_ms": median_ms(verify_samples)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
