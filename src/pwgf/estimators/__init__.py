"""One estimator a module; ``pwgf.registry`` is the table of them."""
