#!/bin/sh
# Create .venv (if missing) and install the pinned requirements and this package into it;
# install the speech synthesisers (espeak-ng, flite, festival with Debian's three English
# voices) and the English text the offline ASR corpus and its LM text are made from (WordNet,
# GCIDE, the Devil's Dictionary, the Jargon File, FOLDOC, fortunes:
# conrwkv/data/offline/text_sources.py), when they are missing and this runs as root. Safe to
# run again.
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
SYSTEM_PACKAGES="espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts wordnet-base
  dict-gcide dict-devil dict-jargon dict-foldoc fortunes fortunes-min"
# one file of each text package, to tell whether it is installed
SYSTEM_TEXT_FILES="/usr/share/wordnet/data.noun /usr/share/dictd/gcide.index /usr/share/dictd/devil.index
  /usr/share/dictd/jargon.index /usr/share/dictd/foldoc.index /usr/share/games/fortunes/literature
  /usr/share/games/fortunes/fortunes"
missing=
for file in $SYSTEM_TEXT_FILES; do [ -f "$file" ] || missing=1; done
if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v flite >/dev/null 2>&1 \
   || ! command -v festival >/dev/null 2>&1 || [ ! -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts ] \
   || [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $SYSTEM_PACKAGES >/dev/null
  else
    echo "setup.sh: note: install $SYSTEM_PACKAGES (apt-get) for the offline speech corpus and LM text" >&2
  fi
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.txt
.venv/bin/python -m pip install --quiet --no-deps -e .
echo "setup.sh: environment ready in .venv"
