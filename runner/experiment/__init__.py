"""The front: ``ExperimentRunner`` checks what it is asked, has a backend run it, and
turns what happened into an ``ExperimentResult``; ``CodeGenerator`` writes scripts."""
