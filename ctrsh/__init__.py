"""ctrsh: build real Linux containers from YAML recipes with stock tools, showing every command."""

import gc

__version__ = "0.1.0"

# Loading ctrsh with typer and sh makes some 100k objects that live as long as the process: with
# Python's default thresholds (700, 10, 10) the cyclic collector ran ~60 times per `apply`, walking
# them again each time (~40 ms of a hello apply, half of it in 5 gen-1 passes). Collect rarely:
# engine._sh() freezes what is loaded and puts the usual thresholds back before steps run.
DEFAULT_GC = gc.get_threshold()
gc.set_threshold(100_000, 50, 100)
