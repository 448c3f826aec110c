#!/usr/bin/env bash
# The README's "A quick tour" block, run as written (each command echoed with "$ " before its
# output), in the current directory: run it from a fresh clone, as docs/tour.md was made.
#   git clone <repo> tour && cd tour && time bash docs/run_tour.sh 2>&1 | tee tour.log
set -euo pipefail
block=$(awk '/^## A quick tour/ {tour = 1} tour && /^```bash/ {inside = 1; next} inside && /^```/ {exit} inside' README.md)
[ -n "$block" ] || { echo "no 'A quick tour' bash block in README.md" >&2; exit 1; }
PS4='$ ' bash -e -x -c "$block"
