"""A folder of speech synthesisers that runs without installation, so that synth.py can make
its corpus on a machine that has neither espeak-ng, flite and festival nor WordNet nor a package
registry (the GPU machine): the Debian packages (and wordnet-base, the text) are fetched here
with `apt-get download`, unpacked with
`dpkg-deb -x` into one folder, and the shared libraries they need beyond the C and C++ runtimes
are copied in beside them from this machine (found with ldd), so the folder depends on nothing
but glibc and libstdc++. kit.json in the folder names its program, library and data folders
(read by synth.Tools) and records the package versions and the size.

What is left out to keep it small: documentation but the copyright files, manual pages,
espeak-ng's dictionaries of languages other than English (synth speaks English only), and
WordNet's files other than the four data files synth reads. pack_kit writes the folder as one
.tar.xz to carry; unpack_kit restores it and checks that every engine speaks.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sysconfig
import tarfile
import tempfile
from pathlib import Path

from conrwkv.data.offline.synth import (
    APT_PACKAGES,
    ENGINES,
    WORDNET_FILES,
    Tools,
    Voice,
    festival_voice_list,
    synthesize,
)
from conrwkv.io import atomic_json_save

log = logging.getLogger(__name__)

MULTIARCH = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
ENGINE_PACKAGES = {
    "espeak": ("espeak-ng", "espeak-ng-data", "libespeak-ng1", "libpcaudio0", "libsonic0"),
    "flite": ("flite", "libflite1"),
    "festival": ("festival", "libestools2.5", "festlex-cmu", "festlex-poslex"),
}
# Two English festival voices (1.7 and 6 MB), so that one can be held out for test-other and
# one trained on; festvox-kdlpc16k (5.5 MB) is the third.
DEFAULT_FESTIVAL_VOICE_PACKAGES = ("festvox-us-slt-hts", "festvox-kallpc16k")
# The voice of each engine that check_kit speaks with (festival: the first voice the kit has).
CHECK_VOICES = {"espeak": "espeak:en-us", "flite": "flite:slt"}
# Libraries every Linux machine that runs Python and torch has; the rest travel in the kit.
RUNTIME_LIBRARIES = ("linux-vdso.so", "ld-linux", "libc.so", "libm.so", "libdl.so", "libpthread.so",
                     "librt.so", "libstdc++.so", "libgcc_s.so")
PRUNED = ("usr/share/man", "usr/share/lintian", "usr/share/info", "usr/share/bug",
          "usr/share/festival/examples")
WORDNET_PACKAGE = "wordnet-base"


def build_kit(out: str | os.PathLike, engines: tuple[str, ...] = ENGINES,
              festival_voice_packages: tuple[str, ...] = DEFAULT_FESTIVAL_VOICE_PACKAGES) -> dict:
    """Make the folder `out` (new or empty) and return its kit.json."""
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; synthkit writes a new folder (--out)")
    unknown = set(engines) - set(ENGINES)
    if unknown or not engines:
        raise ValueError(f"--engines takes some of {list(ENGINES)}, got {list(engines)}")
    for tool, package in (("apt-get", "apt"), ("dpkg-deb", "dpkg"), ("ldd", "libc-bin")):
        if shutil.which(tool) is None:
            raise FileNotFoundError(f"synthkit needs {tool} (Debian package {package})")
    packages = [p for e in ENGINES if e in engines for p in ENGINE_PACKAGES[e]]
    if "festival" in engines:
        packages += festival_voice_packages
    packages.append(WORDNET_PACKAGE)
    root.mkdir(parents=True, exist_ok=True)
    versions = {}
    with tempfile.TemporaryDirectory(prefix="synthkit-debs-") as debs:
        result = subprocess.run(["apt-get", "download", *packages], cwd=debs, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"apt-get download {' '.join(packages)} failed (run apt-get update "
                               f"first?): {result.stderr.strip()}")
        for deb in sorted(Path(debs).glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], check=True,
                                    capture_output=True, text=True).stdout.splitlines()
            versions[fields[0].split(": ", 1)[1]] = fields[1].split(": ", 1)[1]
    for relative in PRUNED:
        shutil.rmtree(root / relative, ignore_errors=True)
    # The licences stay with the files they cover.
    for path in (root / "usr" / "share" / "doc").rglob("*"):
        if path.is_file() and path.name != "copyright":
            path.unlink()
    for path in (root / "usr" / "share" / "wordnet").iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        elif path.name not in WORDNET_FILES:
            path.unlink()
    espeak_data = root / "usr" / "lib" / MULTIARCH / "espeak-ng-data"
    for dictionary in espeak_data.glob("*_dict"):
        if dictionary.name != "en_dict":
            dictionary.unlink()
    _festival_without_system_paths(root / "usr" / "share" / "festival")
    library_path = [f"usr/lib/{MULTIARCH}", f"lib/{MULTIARCH}"]
    copied = _copy_libraries(root, library_path)
    kit = {"bin": "usr/bin", "library_path": library_path,
           "espeak_data_path": f"usr/lib/{MULTIARCH}", "festival_libdir": "usr/share/festival",
           "wordnet_dir": "usr/share/wordnet",
           "engines": [e for e in ENGINES if e in engines], "packages": versions,
           "copied_libraries": copied, "size_bytes": folder_size(root)}
    atomic_json_save(kit, root / "kit.json")
    log.info("synthesiser kit in %s: %d packages, %d libraries copied, %.1f MiB", root, len(versions),
             len(copied), kit["size_bytes"] / 2 ** 20)
    return kit


def _festival_without_system_paths(libdir: Path) -> None:
    """Debian's festival also looks for voices and languages in /usr/share/festival, whatever
    its --datadir; in the kit, it must find only its own (under --datadir), so that what it
    offers does not depend on what the machine has installed."""
    for name, variable in (("voices.scm", "system-voice-path"), ("languages.scm", "system-language-path")):
        path = libdir / name
        if not path.is_file():
            continue
        system = re.compile(rf"\(defvar {variable} '\([^)]*\)")
        text, found = system.subn(f"(defvar {variable} '()", path.read_text())
        if not found:
            raise RuntimeError(f"{path} no longer defines {variable} as synthkit expects; check how "
                               "this festival finds its voices")
        path.write_text(text)


def _copy_libraries(root: Path, library_path: list[str]) -> dict[str, str]:
    """Copy into root/<library_path[0]> every shared library the kit's programs and libraries
    load from outside the kit, but the runtime ones; return {file name: Debian package}."""
    target = root / library_path[0]
    target.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(str(root / d) for d in library_path)}
    elves = [p for p in (root / "usr" / "bin").iterdir() if p.is_file() and _is_elf(p)]
    elves += [p for d in library_path for p in (root / d).glob("*.so*") if p.is_file() and not p.is_symlink()]
    copied = {}
    for elf in elves:
        listing = subprocess.run(["ldd", str(elf)], capture_output=True, text=True, env=env).stdout
        for line in listing.splitlines():
            name, _, where = line.strip().partition(" => ")
            path = where.split(" (")[0].strip()
            if not path.startswith("/") or name in copied or name.startswith(RUNTIME_LIBRARIES):
                continue
            if Path(path).resolve().is_relative_to(root.resolve()):
                continue
            shutil.copy2(Path(path).resolve(), target / name)
            # dpkg knows a file by the path it was installed as (/usr/lib or /lib, merged).
            owner = subprocess.run(["dpkg", "-S", path, path.replace("/usr/lib/", "/lib/", 1),
                                    path.replace("/lib/", "/usr/lib/", 1)],
                                   capture_output=True, text=True).stdout
            copied[name] = owner.split(":", 1)[0] if owner else "unknown"
    return copied


def _is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def folder_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def check_kit(root: str | os.PathLike) -> dict[str, float]:
    """Speak one sentence with a voice of each engine of the kit, from the kit alone; return
    the seconds of audio each made. A kit that cannot speak raises the engine's error."""
    tools = Tools(Path(root))
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="synthkit-check-") as work:
        for engine in tools.kit.get("engines", ENGINES):
            if tools.missing_packages({engine}):
                raise FileNotFoundError(f"the kit {root} lacks {engine} (Debian package "
                                        f"{APT_PACKAGES[engine]}); make it again with dataset2.py synthkit")
            if engine == "festival":
                voices = festival_voice_list(tools)
                if not voices:
                    raise FileNotFoundError(f"the kit {root} has festival but no voice for it; make it "
                                            "again with synthkit --festival_voices")
                voice = Voice("festival", voices[0])
            else:
                voice = Voice.parse(CHECK_VOICES[engine])
            audio = synthesize(voice, "the tennis fathers ruled in her favor", 1.0, Path(work), tools=tools)
            seconds[engine] = round(len(audio) / 16000, 2)
    return seconds


def pack_kit(root: str | os.PathLike, archive: str | os.PathLike) -> int:
    """Write the kit folder as one .tar.xz (must not exist); return its size in bytes."""
    archive = Path(archive)
    if archive.exists():
        raise FileExistsError(f"{archive} exists; choose another --archive")
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:xz") as tar:
        tar.add(root, arcname=".")
    partial.rename(archive)
    return archive.stat().st_size


def unpack_kit(archive: str | os.PathLike, out: str | os.PathLike) -> dict[str, float]:
    """Restore a kit written by pack_kit into the new (or empty) folder `out` and check it."""
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; unpack the kit into a new folder (--out)")
    if not Path(archive).is_file():
        raise FileNotFoundError(f"kit archive {archive} (--unpack) does not exist")
    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(root, filter="tar")        # "tar", not "data": the kit's links must stay
    return check_kit(root)
