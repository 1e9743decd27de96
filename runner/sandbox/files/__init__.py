"""How a run's files reach its sandbox when they are not bind-mounted in place."""
