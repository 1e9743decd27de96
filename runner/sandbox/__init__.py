"""One hardened container on one engine: the Docker seam, the policy, the lifecycle,
the controls checked after create, files in and artifacts out, telemetry and clean-up."""
