#!/usr/bin/env bash
# Make sure the real DICOM peers the tests use are installed.
# As root: installs the missing Debian packages. Otherwise: says what to install and goes
# on (the tests that need a missing tool are skipped locally and fail under CI=true).
set -euo pipefail

# tool:package pairs; add a line here when tests start using another peer.
TOOLS=(
  storescp:dcmtk
  dcmsend:dcmtk
  storescu:dcmtk
  echoscu:dcmtk
  dciodvfy:dicom3tools
  Orthanc:orthanc
  /usr/share/orthanc/plugins/libOrthancDicomWeb.so:orthanc-dicomweb
)

# A tool is a command on PATH, or (starting with /) a file that must exist.
have() {
  if [[ $1 == /* ]]; then [ -e "$1" ]; else command -v "$1" >/dev/null 2>&1; fi
}

missing_tools=()
missing_packages=()
for pair in "${TOOLS[@]}"; do
  tool=${pair%%:*}
  package=${pair#*:}
  if ! have "$tool"; then
    missing_tools+=("$tool")
    if [[ " ${missing_packages[*]-} " != *" $package "* ]]; then
      missing_packages+=("$package")
    fi
  fi
done

if [ ${#missing_tools[@]} -eq 0 ]; then
  echo "ensure-peers: all test peers present (${TOOLS[*]%%:*})"
  exit 0
fi

echo "ensure-peers: missing ${missing_tools[*]} (Debian packages: ${missing_packages[*]})"

if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-peers: not root, not installing. To install them:" >&2
  echo "    sudo apt-get install --no-install-recommends ${missing_packages[*]}" >&2
  echo "ensure-peers: tests that need them will be skipped (and fail when CI=true)." >&2
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-peers: apt-get not found; install ${missing_packages[*]} with your package manager." >&2
  exit 0
fi

echo "ensure-peers: installing ${missing_packages[*]} with apt-get"
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing_packages[@]}"

still_missing=()
for pair in "${TOOLS[@]}"; do
  tool=${pair%%:*}
  have "$tool" || still_missing+=("$tool")
done
if [ ${#still_missing[@]} -ne 0 ]; then
  echo "ensure-peers: still missing after install: ${still_missing[*]}" >&2
  exit 1
fi
echo "ensure-peers: done"
