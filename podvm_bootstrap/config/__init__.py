"""The baked files (bootstrap.yaml, components.yaml, policy.yaml), the pure
data model, and the plan they resolve to."""
