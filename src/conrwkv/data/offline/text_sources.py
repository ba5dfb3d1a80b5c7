"""English prose that Debian packages install, read as plain-text documents for LM pretraining.

One reader per source turns the package's files into documents (a paragraph, a dictionary sense,
a quotation) with the markup stripped; lm_text.py normalises, filters and tokenises them. Every
reader takes the folder the package installs into, so tests (and copies of the files made
elsewhere) can point it at other files in the same format.

Sources (Debian package, licence):
  wordnet   wordnet-base     WordNet 3.0 glosses and examples (WordNet licence, BSD-like)
  gcide     dict-gcide       GNU Collaborative International Dictionary of English: Webster's
                             1913 definitions and quotations (GPL-2+)
  devil     dict-devil       Ambrose Bierce, The Devil's Dictionary, 1911 (public domain)
  jargon    dict-jargon      The Jargon File 4.4.7 (public domain)
  foldoc    dict-foldoc      Free On-line Dictionary of Computing (GFDL 1.1+)
  fortunes  fortunes, fortunes-min  fortune-mod quotations (BSD; the quotations' own authors)

Not used: bible-kjv-text stores the King James Bible in its own compressed format that only the
`bible` program reads; the dict-freedict-* packages are word lists, not prose.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .synth import WORDNET_DIR, WORDNET_FILES, wordnet_glosses

DICTD_DIR = Path("/usr/share/dictd")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
# the one fortune file of pictures rather than sentences
FORTUNE_FILES_LEFT_OUT = frozenset({"ascii-art"})

_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def require_file(path: Path, package: str) -> Path:
    """`path`, or a FileNotFoundError saying which Debian package installs it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: install the Debian package with "
                                f"`apt-get install {package}` (as root; setup.sh does it)")
    return path


# ---------------------------------------------------------------------------------------------
# WordNet


def wordnet_documents(folder: Path = WORDNET_DIR) -> Iterator[str]:
    """Each definition (the parts of a gloss between ";") and each quoted example of WordNet."""
    for name in WORDNET_FILES:        # checked first, for the same message as every other source
        require_file(Path(folder) / name, "wordnet-base")
    for gloss in wordnet_glosses(folder):
        examples = re.findall(r'"([^"]+)"', gloss)
        definition = re.sub(r'"[^"]*"', " ", gloss)
        yield from (part.strip() for part in (*definition.split(";"), *examples) if part.strip())


# ---------------------------------------------------------------------------------------------
# dictd databases (<name>.index and <name>.dict.dz)


def _base64_number(text: str) -> int:
    """dictd's index numbers: big-endian base 64 digits, no padding."""
    number = 0
    for character in text:
        number = number * 64 + _BASE64.index(character)
    return number


def dictd_entries(folder: Path, name: str, package: str) -> Iterator[str]:
    """The text of every entry of the dictd database `<folder>/<name>.{index,dict.dz}`, once
    each in file order (several headwords may point at one entry), without the database's own
    description (headwords starting with "00")."""
    index = require_file(Path(folder) / f"{name}.index", package)
    data_file = require_file(Path(folder) / f"{name}.dict.dz", package)
    spans = set()
    for number, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 3:
            raise ValueError(f"{index}:{number}: not a dictd index line (headword, offset, length)")
        if not fields[0].startswith("00"):
            spans.add((_base64_number(fields[1]), _base64_number(fields[2])))
    with gzip.open(data_file) as file:      # dictzip is gzip with a seek table nobody needs here
        data = file.read()
    for offset, length in sorted(spans):
        entry = data[offset:offset + length]
        try:
            yield entry.decode("utf-8")
        except UnicodeDecodeError:
            # A few GCIDE entries are Windows-1252 (0x92 for an apostrophe); an undefined byte
            # becomes U+FFFD, which normalisation drops like any other non-letter.
            yield entry.decode("cp1252", errors="replace")


def _paragraphs(text: str) -> Iterator[str]:
    """Blank-line separated paragraphs, each joined into one line."""
    for block in re.split(r"\n\s*\n", text):
        line = " ".join(block.split())
        if line:
            yield line


def _without_headword_block(entry: str) -> str:
    """An entry of jargon or foldoc minus its first lines (headword, pronunciation, acronym),
    which end at the first blank line."""
    return entry.strip("\n").partition("\n\n")[2]


def _without_urls(text: str) -> str:
    """Drop web addresses, which FOLDOC and the Jargon File link as {(http://...)} or
    {Name (http://...)}: read aloud they are no English."""
    return re.sub(r"\S*(?:://|www\.)[^\s)}]*\)?", " ", text)


def _remove_bracket_groups(text: str) -> str:
    """Drop every [...] group, innermost first (gcide nests accents inside etymologies)."""
    while True:
        text, count = re.subn(r"\[[^\[\]]*\]", " ", text)
        if not count:
            return text


def gcide_documents(folder: Path = DICTD_DIR) -> Iterator[str]:
    """Each definition, note and quotation of GCIDE, without headword line, pronunciation,
    etymology, sources ("[1913 Webster]"), synonym lists and quotation authors."""
    for entry in dictd_entries(folder, "gcide", "dict-gcide"):
        # Accents are short codes in brackets inside words (["e], [=a], [aum]): keep the letters.
        # Editors' initials ([PJC], [MW10]) have no lowercase letter and go with the other tags.
        entry = re.sub(r"\[(?=[^\]]*[a-z])([^\[\]\s]{1,5})\]",
                       lambda m: re.sub(r"[^A-Za-z]", "", m.group(1)), entry)
        entry = re.sub(r"\\[^\\\n]*\\", " ", entry)          # pronunciation \Ab*ase"ment\
        entry = _remove_bracket_groups(entry)                # etymology, source and region tags
        entry = entry.split("\n", 1)[1] if "\n" in entry else ""   # the headword line
        # and the part of speech when the headword line ran over ("   n. [Sp., a tube...")
        entry = re.sub(r"^[\s,;&]*(?:[a-z]{1,5}\.[\s,;&]*)+", "", entry)
        for paragraph in _paragraphs(entry):
            if paragraph.startswith("Syn:"):
                continue
            paragraph = re.sub(r"^\d+\.\s*", "", paragraph)                 # sense numbers
            paragraph = re.sub(r"(?:^|\s)\([a-z]\)\s", " ", paragraph)      # sub-senses (a), (b)
            paragraph = re.sub(r"^Note:\s*", "", paragraph)
            paragraph = re.sub(r"\s--\S.*$", "", paragraph)                  # --Author. Book
            paragraph = re.sub(r"\((?:[A-Z][a-z]*\.\s*)+\)", " ", paragraph)  # (Zool.) field labels
            paragraph = paragraph.replace("{", "").replace("}", "")
            if paragraph.strip():
                yield paragraph.strip()


def devil_documents(folder: Path = DICTD_DIR) -> Iterator[str]:
    """Each definition (and verse) of The Devil's Dictionary, without the "WORD, n." head."""
    for entry in dictd_entries(folder, "devil", "dict-devil"):
        entry = re.sub(r"^[A-Z][A-Z'\- ]*,(?:\s*[a-z]+\.)+\s*", "", entry.lstrip())
        yield from _paragraphs(entry)


def jargon_documents(folder: Path = DICTD_DIR) -> Iterator[str]:
    """Each paragraph of the Jargon File's entries, without usage tags ("[IRC; common]")."""
    for entry in dictd_entries(folder, "jargon", "dict-jargon"):
        text = _remove_bracket_groups(_without_urls(_without_headword_block(entry)))
        yield from _paragraphs(text.replace("{", "").replace("}", ""))


def foldoc_documents(folder: Path = DICTD_DIR) -> Iterator[str]:
    """Each paragraph of FOLDOC's entries, without subject tags ("<programming>") and dates."""
    for entry in dictd_entries(folder, "foldoc", "dict-foldoc"):
        text = re.sub(r"<[^<>\n]*>", " ", _without_urls(_without_headword_block(entry)))
        text = text.replace("{", "").replace("}", "")
        for paragraph in _paragraphs(text):
            if not re.fullmatch(r"\(\d{4}-\d{2}-\d{2}\)", paragraph):
                yield paragraph


# ---------------------------------------------------------------------------------------------
# fortune cookies


def fortune_documents(folder: Path = FORTUNES_DIR) -> Iterator[str]:
    """Each cookie of the fortune files (between "%" lines), without its indented "-- Author"
    attribution (which may run over several lines); the file of ASCII pictures is left out."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*") if p.is_file() and not p.suffix
                   and p.name not in FORTUNE_FILES_LEFT_OUT)
    if not files:
        raise FileNotFoundError(f"no fortune files in {folder}: install the Debian package with "
                                "`apt-get install fortunes` (as root; setup.sh does it)")
    for path in files:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:          # a few older files are Latin-1
            text = raw.decode("latin-1")
        text = re.sub(r".\x08", "", text)  # overstrike underlining: "_\bw"
        for cookie in re.split(r"^%$", text, flags=re.MULTILINE):
            # An unindented "--" is a dash inside the text; the attribution is indented.
            text_part = re.split(r"^[ \t]+--", cookie, maxsplit=1, flags=re.MULTILINE)[0]
            joined = " ".join(text_part.split())
            if joined:
                yield joined


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextSource:
    reader: Callable[[Path], Iterator[str]]
    folder: Path            # where the Debian package installs its files
    package: str
    licence: str


SOURCES: dict[str, TextSource] = {
    "wordnet": TextSource(wordnet_documents, WORDNET_DIR, "wordnet-base", "WordNet 3.0 licence (BSD-like)"),
    "gcide": TextSource(gcide_documents, DICTD_DIR, "dict-gcide", "GPL-2+"),
    "devil": TextSource(devil_documents, DICTD_DIR, "dict-devil", "public domain"),
    "jargon": TextSource(jargon_documents, DICTD_DIR, "dict-jargon", "public domain"),
    "foldoc": TextSource(foldoc_documents, DICTD_DIR, "dict-foldoc", "GFDL 1.1+"),
    "fortunes": TextSource(fortune_documents, FORTUNES_DIR, "fortunes fortunes-min", "BSD (fortune-mod)"),
}
