"""What the tests, benchmarks and the demo share: paths, the CLI runner, readers of what the
tool writes, and generated pictures, worlds and archives.

    support.cli       run the tool (a subprocess or in this process), read its summary
    support.files     sha256 of a file, a snapshot of files' bytes and stat fields, temp files
    support.images    generated pictures and readers of their pixels
    support.formats   camera files written from scratch: DNG (with a preview), HEIC, EXIF
    support.xmp       the one XMP/EXIF reader and writer; the caption the README promises
    support.logpage   the HTML log parsed into its markup and its text
    support.examples  example_pictures/ and what the tool must write into each picture
    support.world     a small generated world: pictures, their iNaturalist twins, a scenario
    support.archive   a big generated camera archive and its scenario (test_incremental.py,
                      bench_archive.py)
    support.browser   headless Chromium: the HTML log's DOM after its script ran, screenshots

The pytest fixtures built on these live in tests/conftest.py. Importing this package puts the
repository root (inat_photos.py) and tests/ (fake_inat.py, make_*.py) on sys.path, so that the
scripts in tests/ can be run from anywhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
TESTS = ROOT / "tests"
EXAMPLES = ROOT / "example_pictures"
SCENARIO = EXAMPLES / "scenario.json"
SCRIPT = ROOT / "inat_photos.py"

for _folder in (ROOT, TESTS):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))
