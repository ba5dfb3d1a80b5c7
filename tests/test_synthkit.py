"""The synthesiser kit: a folder of unpacked Debian packages that synth runs from, with nothing of
the machine's own synthesisers on PATH (as on the GPU machine, which has none)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from speech_fixtures import dataset2_cli

from conrwkv.data.offline import synth, synthkit
from conrwkv.data.offline.synth import SynthConfig, Tools, Voice, synthesize_corpus
from conrwkv.data.speech import load_corpus


def test_a_kit_folder_sets_the_paths_of_its_programs_libraries_and_data(tmp_path):
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    for program in ("espeak-ng", "festival"):
        (tmp_path / "usr" / "bin" / program).write_text("")
    (tmp_path / "kit.json").write_text(json.dumps({
        "bin": "usr/bin", "library_path": ["usr/lib/x", "lib/x"], "espeak_data_path": "usr/lib/x",
        "festival_libdir": "usr/share/festival", "wordnet_dir": "usr/share/wordnet"}))
    tools = Tools(tmp_path)
    env = tools.env()
    assert env["LD_LIBRARY_PATH"] == f"{tmp_path}/usr/lib/x:{tmp_path}/lib/x"
    assert env["ESPEAK_DATA_PATH"] == f"{tmp_path}/usr/lib/x"
    assert env["PATH"].startswith(f"{tmp_path}/usr/bin:")
    argv, _ = tools.command(Voice.parse("espeak:en-us"), "hi", 1.0, tmp_path / "a.wav")
    assert argv[0] == str(tmp_path / "usr" / "bin" / "espeak-ng")
    argv, _ = tools.command(Voice.parse("festival:kal_diphone"), "hi", 1.0, tmp_path / "a.wav")
    libdir = str(tmp_path / "usr" / "share" / "festival")
    assert argv[:5] == [str(tmp_path / "usr" / "bin" / "festival"), "--libdir", libdir, "--datadir", libdir]
    assert tools.missing_packages({"espeak", "flite", "festival"}) == ["flite"]
    assert tools.wordnet_dir() == tmp_path / "usr" / "share" / "wordnet"


def test_a_folder_that_is_no_kit_is_named(tmp_path, capsys):
    assert dataset2_cli().main(["synth", "--out", str(tmp_path / "c"), "--tools", str(tmp_path),
                                "--train", "1", "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert "kit.json" in err and "--tools" in err and "Traceback" not in err, err
    with pytest.raises(FileExistsError, match="not empty"):
        synthkit.build_kit(tmp_path.parent)
    with pytest.raises(ValueError, match="--engines takes some of"):
        synthkit.build_kit(tmp_path / "new", engines=("mbrola",))


@pytest.fixture(scope="module")
def espeak_kit(tmp_path_factory):
    """A kit of espeak-ng alone (about 5 MB to download), built once for this file."""
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        pytest.skip("needs apt-get and dpkg-deb")
    root = tmp_path_factory.mktemp("kit") / "synthkit"
    try:
        synthkit.build_kit(root, engines=("espeak",))
    except RuntimeError as err:                      # no package registry within reach
        pytest.skip(f"apt-get download failed: {err}")
    return root


def _no_installed_synthesisers(monkeypatch, tmp_path):
    """As on the GPU machine: no synthesiser on PATH and no WordNet installed, only the kit."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    monkeypatch.setattr(synth, "WORDNET_DIR", tmp_path / "no-wordnet")


def test_synth_runs_from_the_kit_alone(espeak_kit, monkeypatch, tmp_path):
    kit = json.loads((espeak_kit / "kit.json").read_text())
    assert kit["engines"] == ["espeak"] and "espeak-ng" in kit["packages"]
    assert kit["size_bytes"] < 40 * 2 ** 20
    assert not list((espeak_kit / kit["espeak_data_path"] / "espeak-ng-data").glob("de_dict"))
    assert sorted(p.name for p in (espeak_kit / kit["wordnet_dir"]).iterdir()) == sorted(synth.WORDNET_FILES)
    _no_installed_synthesisers(monkeypatch, tmp_path)
    assert subprocess.run(["/bin/sh", "-c", "command -v espeak-ng"], capture_output=True).returncode != 0
    assert synthkit.check_kit(espeak_kit)["espeak"] > 1.0
    config = SynthConfig(train=2, dev=1, test_clean=0, test_other=1,
                         voices=("espeak:en-us", "espeak:en-gb+f3"), heldout_voices=("espeak:en-029",),
                         speeds=(1.0,), max_words=5)
    out = synthesize_corpus(tmp_path / "corpus", config, workers=2, progress=False, tools=espeak_kit)
    assert len(load_corpus(out, "train")) == 2
    assert "espeak-ng" in json.loads((out / "meta.json").read_text())["tools"]
    with pytest.raises(FileNotFoundError, match=r"packages flite, which are not installed \(nor in --tools"):
        synthesize_corpus(tmp_path / "other", SynthConfig(**{**config.__dict__, "voices": ("flite:slt",)}),
                          progress=False, tools=espeak_kit)
    named = synth.resolve_voices(SynthConfig(voices=("all",), heldout_voices=()), Tools(espeak_kit))
    assert named.voices and all(v.startswith("espeak:") for v in (*named.voices, *named.heldout_voices))


def test_the_kit_travels_as_one_archive(espeak_kit, monkeypatch, tmp_path):
    size = synthkit.pack_kit(espeak_kit, tmp_path / "kit.tar.xz")
    assert 0 < size < synthkit.folder_size(espeak_kit)
    with pytest.raises(FileExistsError, match="choose another --archive"):
        synthkit.pack_kit(espeak_kit, tmp_path / "kit.tar.xz")
    _no_installed_synthesisers(monkeypatch, tmp_path)
    assert dataset2_cli().main(["synthkit", "--unpack", str(tmp_path / "kit.tar.xz"),
                                "--out", str(tmp_path / "there")]) == 0
    assert (tmp_path / "there" / "kit.json").is_file()
