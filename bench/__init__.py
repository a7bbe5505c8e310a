"""Benchmarks of zsad on the machine at hand (see bench/README.md). Not part of the installed package.

Every script runs from the repository root as a module, ``python -m bench.<script>``, so that ``bench``,
``core``, ``engines`` and the rest import without any script editing ``sys.path``.
"""
