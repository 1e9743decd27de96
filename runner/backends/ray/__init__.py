"""The Ray backend: the caller's side, and the program each node runs."""
