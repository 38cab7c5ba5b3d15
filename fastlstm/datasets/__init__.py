"""Small real datasets bundled with fastlstm, usable offline.

See ``data/README.md`` in this package for attribution and licences.
"""

from ._loaders import load_airline, load_japanese_vowels

__all__ = ["load_japanese_vowels", "load_airline"]
