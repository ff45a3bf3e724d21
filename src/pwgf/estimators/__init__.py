"""One estimator a module; :mod:`pwgf.registry` is the table of them."""
