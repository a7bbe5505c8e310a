"""Build the engines of a checkpoint: ``python build_engines.py --config C --checkpoint K --out DIR``.

The same as ``zsad build-engines`` (see ``engines/build.py`` and ``docs/engines.md``).
"""

from __future__ import annotations

import sys

from pipeline.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["build-engines", *sys.argv[1:]]))
