"""Thin Ray Serve adapters around :mod:`pipeline`: they hold handles, load models, map errors."""
