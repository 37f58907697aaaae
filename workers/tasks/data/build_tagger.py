"""Rebuild ``perceptron_tagger_eng.json.gz`` from NLTK's official English averaged-perceptron tagger.

The tagger's weights come from nltk_data's ``packages/taggers/averaged_perceptron_tagger.zip`` (the model that
``nltk.pos_tag`` used up to nltk 3.8, and that nltk 3.9+ ships converted to JSON as
``averaged_perceptron_tagger_eng``). The zip is checked against the MD5 that nltk_data's ``index.xml`` lists
for it, then its pickle is read with an unpickler that can build nothing but plain containers, and written as
gzipped JSON in the layout of ``PerceptronTagger.decode_json_params``: ``[weights, tagdict, classes]``.

Usage (run from the repository root, with the zip fetched by hand from nltk_data's gh-pages branch)::

    python -m workers.tasks.data.build_tagger path/to/averaged_perceptron_tagger.zip

It prints nothing and writes ``workers/tasks/data/perceptron_tagger_eng.json.gz``; update ``TAGGER_SHA256`` in
``workers/tasks/_chair_text.py`` with the new file's SHA-256 if the bytes change.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import sys
import zipfile
from pathlib import Path

# nltk/nltk_data:index.xml, <package id="averaged_perceptron_tagger" ... checksum=...>
OFFICIAL_ZIP_MD5 = "05c91d607ee1043181233365b3f76978"
MEMBER = "averaged_perceptron_tagger/averaged_perceptron_tagger.pickle"
OUTPUT = Path(__file__).with_name("perceptron_tagger_eng.json.gz")


class _ContainersOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        if module in {"builtins", "__builtin__"} and name in {"set", "frozenset"}:  # a Python 2 pickle
            return {"set": set, "frozenset": frozenset}[name]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the tagger pickle")


def convert(zip_path: Path, output: Path = OUTPUT) -> None:
    """Check ``zip_path`` against the official MD5 and write the tagger as gzipped JSON to ``output``."""
    data = zip_path.read_bytes()
    digest = hashlib.md5(data).hexdigest()
    if digest != OFFICIAL_ZIP_MD5:
        raise SystemExit(f"{zip_path}: MD5 {digest} is not nltk_data's {OFFICIAL_ZIP_MD5}")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        weights, tagdict, classes = _ContainersOnly(
            io.BytesIO(archive.read(MEMBER)), encoding="latin1"
        ).load()
    text = json.dumps([weights, tagdict, sorted(classes)], sort_keys=True, separators=(",", ":"))
    # mtime=0 keeps the gzip bytes reproducible.
    output.write_bytes(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))


if __name__ == "__main__":
    convert(Path(sys.argv[1]))
