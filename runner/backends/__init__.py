"""Where sandboxes run: this machine's engine (cold or from a warm pool), or a Ray cluster."""
