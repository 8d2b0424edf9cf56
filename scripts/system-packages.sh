#!/usr/bin/env bash
# Debian packages that `make book` and `make test` need beyond Python: installed when run as
# root on Debian, otherwise one line that says what to install, and a non-zero exit.
#   usage: scripts/system-packages.sh book|test
set -euo pipefail

# command -> Debian package
declare -A BOOK=([npm]=npm)                       # the site's own MathJax, RequireJS and Thebe
declare -A TEST=([npm]=npm [chromium]=chromium [redis-server]=redis-server)  # browser tests, grading queue

case "${1:-}" in
  book) declare -n wanted=BOOK ;;
  test) declare -n wanted=TEST ;;
  *) echo "usage: $0 book|test" >&2; exit 2 ;;
esac

missing=()
for command in "${!wanted[@]}"; do
  command -v "$command" >/dev/null 2>&1 || missing+=("${wanted[$command]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "make $1 needs Debian packages that are missing: run 'sudo apt-get install ${missing[*]}'" >&2
  exit 1
fi
