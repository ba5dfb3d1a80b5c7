"""JSON and text reads whose errors name the file (and the line): conrwkv.io's read helpers."""

import subprocess
import sys

import pytest

from conrwkv.io import parse_json, read_json, text_lines


def test_read_json_returns_the_object_with_its_keys(tmp_path):
    (tmp_path / "meta.json").write_text('{"format": "x", "params": {"a": 1}}\n')
    assert read_json(tmp_path / "meta.json", "meta.json", ("format", "params")) == {
        "format": "x", "params": {"a": 1}}


@pytest.mark.parametrize("content,message", [
    (b'{"format": "x", ', r"meta\.json: test meta\.json is not valid JSON \(line 1, column 17"),
    (b"", r"meta\.json: test meta\.json is not valid JSON \(line 1, column 1"),
    (b'["format"]', r"meta\.json: test meta\.json must hold a JSON object, found list"),
    (b'{"format": "x"}', r"meta\.json: test meta\.json lacks the keys \['params'\]"),
    (b'{"format": "\xff"}', r"meta\.json: test meta\.json is not UTF-8 text \(a bad byte at offset 12\)"),
])
def test_malformed_json_names_the_file(tmp_path, content, message):
    (tmp_path / "meta.json").write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        read_json(tmp_path / "meta.json", "test meta.json", ("format", "params"))
    assert str(tmp_path / "meta.json") in str(info.value) and "\n" not in str(info.value)


def test_missing_json_file_and_json_from_elsewhere(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"test meta\.json .*nothere\.json does not exist"):
        read_json(tmp_path / "nothere.json", "test meta.json")
    with pytest.raises(ValueError, match=r"pack\.tar:meta\.json: corpus meta\.json is not valid JSON"):
        parse_json(b"{", "pack.tar:meta.json", "corpus meta.json")


def test_text_lines_number_the_lines_and_name_a_bad_one(tmp_path):
    path = tmp_path / "19-198.trans.txt"
    path.write_bytes("19-198-0000 CAF\u00c9\r\n\n19-198-0001 NORTH\n".encode())
    assert list(text_lines(path)) == [(1, "19-198-0000 CAF\u00c9"), (2, ""), (3, "19-198-0001 NORTH")]
    path.write_bytes(b"19-198-0000 OK\n19-198-0001 CAF\xe9\n")     # Latin-1, not UTF-8
    lines = text_lines(path)
    assert next(lines) == (1, "19-198-0000 OK")
    with pytest.raises(ValueError, match=r"19-198\.trans\.txt:2: not UTF-8 text \(byte 0xe9 at column 16\)"):
        next(lines)


def test_the_markov_data_tool_starts_without_torch():
    # datanew.py runs in tests and demos many times; importing torch would cost it two seconds.
    code = "import sys, conrwkv.data.markov; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
