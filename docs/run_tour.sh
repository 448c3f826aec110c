#!/usr/bin/env bash
# The README's "A quick tour" block, run as written (each command echoed with "$ " before its
# output), then the README's Python snippet in the environment the tour made; run it from a fresh
# clone, as docs/tour.md was made:
#   git clone <repo> tour && cd tour && time bash docs/run_tour.sh 2>&1 | tee tour.log
set -euo pipefail
block() {  # the first fenced block of language $2 after the heading line matching $1 (empty $1: anywhere)
    awk -v heading="$1" -v fence="^\`\`\`$2\$" '
        heading == "" || $0 ~ heading {after = 1}
        after && $0 ~ fence {inside = 1; next}
        inside && /^```/ {exit}
        inside' README.md
}
tour=$(block "^## A quick tour" bash)
snippet=$(block "" python)
[ -n "$tour" ] && [ -n "$snippet" ] || { echo "README.md lacks the quick tour's bash block or the Python snippet" >&2; exit 1; }
# the activation script's own lines (traced with "++") are left out
bash -e -c "PS4='\$ '; set -x
$tour" 2>&1 | grep -v '^\$\$ '
echo '$ python  # the README'"'"'s Python snippet'
.venv/bin/python -c "$snippet"
