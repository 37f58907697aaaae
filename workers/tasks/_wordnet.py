"""WordNet lemmatisation without NLTK's data downloader.

CHAIR lemmatises caption words with ``nltk.stem.WordNetLemmatizer`` (shikiw/OPERA:chair.py
``caption_to_words``). That lemmatiser only needs WordNet 3.0's ``index.<pos>`` and ``<pos>.exc`` files: it
applies the exception list or one round of suffix rules and keeps the candidates that WordNet lists, then
returns the shortest. This module does exactly that (nltk 3.9+ ``WordNetCorpusReader._morphy`` and
``WordNetLemmatizer.lemmatize``, rules copied from ``MORPHOLOGICAL_SUBSTITUTIONS``) on the dict files of any
WordNet 3.0 install, so that Debian's ``wordnet-base`` package (``/usr/share/wordnet``) is enough: it ships no
``lexnames`` file, which NLTK's reader insists on.

Where the files are looked up, first hit wins: ``$WNSEARCHDIR`` (WordNet's own variable), an NLTK data
``corpora/wordnet`` folder or zip, then ``/usr/share/wordnet``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from workers.tasks._errors import DataError

__all__ = ["WordNetMorphy", "find_wordnet", "load_wordnet"]

NOUN, VERB, ADJ, ADV = "n", "v", "a", "r"
_FILE_SUFFIX = {NOUN: "noun", VERB: "verb", ADJ: "adj", ADV: "adv"}
_DEBIAN_DIR = Path("/usr/share/wordnet")

# nltk:corpus/reader/wordnet.py WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS (order matters only for ties).
_SUBSTITUTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    NOUN: (
        ("s", ""),
        ("ses", "s"),
        ("ves", "f"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
    ),
    VERB: (
        ("s", ""),
        ("ies", "y"),
        ("es", "e"),
        ("es", ""),
        ("ed", "e"),
        ("ed", ""),
        ("ing", "e"),
        ("ing", ""),
    ),
    ADJ: (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    ADV: (),
}


@dataclass(frozen=True)
class WordNetMorphy:
    """WordNet's morphological lemmatiser over the lemma index and exception lists of one WordNet install."""

    lemmas: Mapping[str, frozenset[str]]
    exceptions: Mapping[str, Mapping[str, tuple[str, ...]]]
    source: str

    def candidates(self, form: str, pos: str) -> list[str]:
        """All lemmas of ``form`` as ``pos`` that WordNet lists (nltk ``_morphy``, single rule pass)."""
        known = self.lemmas[pos]
        if form in self.exceptions[pos]:
            forms = list(self.exceptions[pos][form])
        else:
            forms = [form[: -len(old)] + new for old, new in _SUBSTITUTIONS[pos] if form.endswith(old)]
        found: list[str] = []
        for candidate in [form, *forms]:
            if candidate in known and candidate not in found:
                found.append(candidate)
        return found

    def lemmatize(self, word: str, pos: str = NOUN) -> str:
        """The shortest lemma, or ``word`` unchanged (nltk ``WordNetLemmatizer.lemmatize``)."""
        found = self.candidates(word, pos)
        return min(found, key=len) if found else word


def find_wordnet():
    """Where WordNet's dict files are: a folder, an NLTK data path pointer (maybe into a zip), or ``None``."""
    env = os.environ.get("WNSEARCHDIR")
    if env:
        return Path(env)
    import nltk.data

    try:
        return nltk.data.find("corpora/wordnet")
    except LookupError:
        pass
    return _DEBIAN_DIR if (_DEBIAN_DIR / "index.noun").is_file() else None


@cache
def load_wordnet(location: str | None = None) -> WordNetMorphy:
    """Read the lemma index and exception lists of the folder ``location`` (default: :func:`find_wordnet`).

    Raises:
        DataError: no WordNet is installed, or one of its files cannot be read.
    """
    where = Path(location) if location else find_wordnet()
    if where is None:
        raise DataError(
            "CHAIR needs WordNet 3.0 and none was found: install Debian's wordnet-base "
            "(apt-get install wordnet-base), or set WNSEARCHDIR to a folder holding index.noun"
        )
    lemmas = {
        pos: frozenset(_index_lemmas(_read(where, f"index.{sfx}"))) for pos, sfx in _FILE_SUFFIX.items()
    }
    exceptions = {pos: _exception_map(_read(where, f"{sfx}.exc")) for pos, sfx in _FILE_SUFFIX.items()}
    return WordNetMorphy(lemmas=lemmas, exceptions=exceptions, source=str(where))


def _read(where, name: str) -> str:
    """Text of one dict file from a folder or an NLTK ``PathPointer``."""
    if isinstance(where, Path):
        return _read_file(where / name)
    try:
        with where.join(name).open() as stream:
            return stream.read().decode("utf-8")
    except OSError as e:
        raise DataError(f"{where}: cannot read WordNet file {name}: {e}") from e


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read WordNet file: {e.strerror or e}") from e


def _index_lemmas(text: str) -> list[str]:
    """Lemma column of an ``index.<pos>`` file; its licence header lines start with a space."""
    return [line.split(" ", 1)[0] for line in text.splitlines() if line and not line.startswith(" ")]


def _exception_map(text: str) -> dict[str, tuple[str, ...]]:
    table: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        terms = line.split()
        if terms:
            table[terms[0]] = tuple(terms[1:])
    return table
