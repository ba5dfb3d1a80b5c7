"""Each Debian text source's reader on a tiny fixture in the package's real file format (markup
stripped, entries shared by several headwords read once, the database's own description left
out), the clear error when a package is missing, and one look at the installed packages."""

from __future__ import annotations

import gzip
import itertools

import pytest
from text_fixtures import (
    FOLDOC_ENTRY,
    GCIDE_ENTRY,
    JARGON_ENTRY,
    write_all_sources,
    write_dictd,
    write_fortunes,
    write_wordnet,
)

from conrwkv.data.offline.text_sources import (
    SOURCES,
    devil_documents,
    dictd_entries,
    foldoc_documents,
    fortune_documents,
    gcide_documents,
    jargon_documents,
    wordnet_documents,
)


def test_wordnet_documents_are_definitions_then_examples(tmp_path):
    folder = write_wordnet(tmp_path / "wordnet")
    assert list(wordnet_documents(folder)) == [
        "that which is perceived or known", "the cat's whiskers", "The Cat's Whiskers!",
        "a period of 365 days", "in 1920 he left", "a long year passed",
        "move fast by using one's feet", "Don't run!", "and so on", "and so on", "without haste"]


def test_dictd_entries_are_read_once_in_file_order_without_the_database_description(tmp_path):
    write_dictd(tmp_path, "foldoc", [(["b", "a"], "second\n"), (["c"], "third, café\n")])
    assert list(dictd_entries(tmp_path, "foldoc", "dict-foldoc")) == ["second\n", "third, café\n"]
    (tmp_path / "foldoc.index").write_text("broken line\n")
    with pytest.raises(ValueError, match=r"foldoc\.index:1: not a dictd index line"):
        list(dictd_entries(tmp_path, "foldoc", "dict-foldoc"))


def test_dictd_entries_in_windows_1252_are_read(tmp_path):
    write_dictd(tmp_path, "gcide", [(["x"], "placeholder\n")])
    with gzip.open(tmp_path / "gcide.dict.dz") as file:
        data = file.read()
    with gzip.open(tmp_path / "gcide.dict.dz", "wb") as file:
        file.write(data.replace(b"placeholder\n", b"don\x92t\n\x81.\n"))
    assert list(dictd_entries(tmp_path, "gcide", "dict-gcide")) == ["don\u2019t\n\ufffd.\n"]


def test_gcide_definitions_quotations_and_notes(tmp_path):
    write_dictd(tmp_path, "gcide", [(["Aerate", "Aerated"], GCIDE_ENTRY)])
    assert list(gcide_documents(tmp_path)) == [
        "To combine or charge with gas; usually with carbonic acid gas, formerly called fixed air.",
        "His sparkling sallies bubbled up as from aerated natural fountains.",
        "To expose to the chemical action of air.",
        "To fill with air. To stir.",
        "This is said of the blood in 1850.",
        "Aerated bread, bread raised by charging dough with carbonic acid gas.",
    ]


def test_devil_jargon_and_foldoc_paragraphs(tmp_path):
    write_dictd(tmp_path, "devil", [(["abasement"], "ABASEMENT, n.  A decent attitude\nof mind.\n\n"
                                                    "  A verse, it is.\n"),
                                    (["ad"], "AD, n. pl.  Said twice.\n")])
    assert list(devil_documents(tmp_path)) == ["A decent attitude of mind.", "A verse, it is.",
                                               "Said twice."]
    write_dictd(tmp_path, "jargon", [(["/me"], JARGON_ENTRY), (["empty"], "empty\n")])
    assert list(jargon_documents(tmp_path)) == [
        "Under most IRC, /me is the “pose” command; see MUD.", "This usage has been carried over to mail."]
    write_dictd(tmp_path, "foldoc", [(["c/scsc", "cost/schedule control system criteria"], FOLDOC_ENTRY)])
    assert list(foldoc_documents(tmp_path)) == [
        "(C/SCSC) A set of criteria specified by the Federal Government. See and Home ,"]


def test_fortune_cookies_without_attributions_and_pictures(tmp_path):
    folder = write_fortunes(tmp_path)
    assert list(fortune_documents(folder)) == [
        "A banker is a fellow who lends you his umbrella when the sun is shining.",
        "A \"critic\" is a man who creates nothing; -- he hates all creative people equally.",
        "Read this twice.",
    ]
    (folder / "literature").write_bytes("Caf\xe9 au lait.\n%\n".encode("latin-1"))
    assert list(fortune_documents(folder)) == ["Café au lait."]


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_a_missing_package_names_its_apt_get_command(tmp_path, name):
    command = f"apt-get install {SOURCES[name].package.split()[0]}"
    with pytest.raises(FileNotFoundError, match=rf"install the Debian package with `{command}`"):
        list(SOURCES[name].reader(tmp_path))


def test_every_source_reads_its_fixture(tmp_path):
    for name, folder in write_all_sources(tmp_path).items():
        assert list(SOURCES[name].reader(folder)), name


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_installed_package_gives_text(name):
    source = SOURCES[name]
    documents = source.reader(source.folder)
    try:
        first = list(itertools.islice(documents, 200))
    except FileNotFoundError:
        pytest.skip(f"Debian package {source.package} not installed")
    assert len(first) == 200 and all(isinstance(d, str) and d.strip() for d in first)
