"""ctrsh: build real Linux containers from YAML recipes with stock tools, showing every command."""

__version__ = "0.1.0"
