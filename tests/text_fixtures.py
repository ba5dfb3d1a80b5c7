"""Tiny copies of the Debian text packages in their real file formats, for the LM text tests:
WordNet 3.0 data.* files, dictd databases (<name>.index with base-64 offsets, <name>.dict.dz
gzip data) and fortune files (cookies between "%" lines)."""

from __future__ import annotations

import gzip
from pathlib import Path

BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

# WordNet 3.0's data.* format: the licence header (lines starting with two spaces, which may
# hold " | " and quotes too), then `offset ... | gloss; "example"; ...`.
WORDNET_HEADER = ('  1 This software and database is being provided to you, the LICENSEE, by  \n'
                  '  16 THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON | header; "not me"  \n')
WORDNET = {
    "data.noun": [
        '00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived or known; '
        '"the cat\'s whiskers"; "The Cat\'s Whiskers!"  ',
        '00002100 03 n 01 year 0 000 | a period of 365 days; "in 1920 he left"; "a long year passed"  ',
        'a line without a gloss separator',
    ],
    "data.verb": ['00003000 29 v 01 run 0 000 | move fast by using one\'s feet; "Don\'t run!"  '],
    "data.adj": ['00004000 00 a 01 slow 0 000 | and so on; "and so on"  '],
    "data.adv": ['00005000 02 r 01 slowly 0 000 | without haste  '],
}

GCIDE_ENTRY = """Aerate \\A"["e]r*ate\\ (a["e]r"[=a]t),
   v. t. [imp. & p. p. {A["e]rated}; p. pr. &
   vb. n. {A["e]rating}.] [Cf. F. a['e]rer. See {Air}, v. t.]
   1. To combine or charge with gas; usually with carbonic acid
      gas, formerly called fixed air.
      [1913 Webster]

            His sparkling sallies bubbled up as from a["e]rated
            natural fountains.                    --Carlyle.
      [1913 Webster]

   2. (Physiol.) To expose to the chemical action of air.
      [1913 Webster]

   3. (a) To fill with air. (b) To stir.
      [1913 Webster]

   Note: This is said of the blood in 1850.

   Syn: activate
        [WordNet 1.5]

   {A["e]rated bread}, bread raised by charging dough with
      carbonic acid gas.
      [PJC]
"""
DEVIL_ENTRY = """ABASEMENT, n.  A decent and customary mental attitude in the presence
of wealth of power.

  Peculiarly appropriate in an employee.
"""
JARGON_ENTRY = """/me
 //

    [IRC; common] Under most IRC, /me is the “pose” command; see {MUD}.

    This usage has been carried over to mail.
"""
FOLDOC_ENTRY = """Cost/Schedule Control System Criteria
C/SCSC

   <project> (C/SCSC) A set of criteria specified by the {Federal
   Government}.  See {(http://example.org/c-scsc.html)} and {Home
   (https://www.example.org/)}, www.example.org/x.

   (1996-05-29)
"""
FORTUNES = {
    "literature": ("A banker is a fellow who lends you his umbrella when the sun is shining.\n"
                   "\t\t-- Mark Twain\n%\n"
                   "A \"critic\" is a man who creates nothing;\n-- he hates all creative people equally.\n"
                   "\t\t-- Robert Heinlein,\n\t\t   \"Time Enough For Love\"\n%\n"
                   "Read _\bt_\bh_\bi_\bs twice.\n%\n"),
    "ascii-art": "  /\\_/\\\n ( o.o )\n%\n",
}


def base64_number(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 64)
        digits = BASE64[digit] + digits
        if not number:
            return digits


def write_wordnet(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in WORDNET.items():
        (folder / name).write_text(WORDNET_HEADER + "\n".join(lines) + "\n", encoding="latin-1")
    return folder


def write_dictd(folder: Path, name: str, entries: list[tuple[list[str], str]]) -> Path:
    """`<folder>/<name>.index` and `.dict.dz` holding `entries` (headwords, text), after the
    "00-database-info" entry every dictfmt database starts with."""
    folder.mkdir(parents=True, exist_ok=True)
    data, index = b"", []
    for headwords, text in [(["00-database-info"], "This file was converted by dictfmt.\n"), *entries]:
        raw = text.encode("utf-8")
        index += [f"{word}\t{base64_number(len(data))}\t{base64_number(len(raw))}" for word in headwords]
        data += raw
    (folder / f"{name}.index").write_text("\n".join(sorted(index)) + "\n", encoding="utf-8")
    with gzip.open(folder / f"{name}.dict.dz", "wb") as file:
        file.write(data)
    return folder


def write_fortunes(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in FORTUNES.items():
        (folder / name).write_text(text, encoding="utf-8")
        (folder / f"{name}.dat").write_bytes(b"\x00\x00\x00\x02 strfile index")
    return folder


def write_all_sources(folder: Path) -> dict[str, Path]:
    """Every source in its own folder under `folder`: {source name: folder}."""
    dictd = folder / "dictd"
    write_dictd(dictd, "gcide", [(["Aerate", "Aerated"], GCIDE_ENTRY)])
    write_dictd(dictd, "devil", [(["abasement"], DEVIL_ENTRY)])
    write_dictd(dictd, "jargon", [(["/me"], JARGON_ENTRY)])
    write_dictd(dictd, "foldoc", [(["c/scsc", "cost/schedule control system criteria"], FOLDOC_ENTRY)])
    return {"wordnet": write_wordnet(folder / "wordnet"), "gcide": dictd, "devil": dictd,
            "jargon": dictd, "foldoc": dictd, "fortunes": write_fortunes(folder / "fortunes")}
