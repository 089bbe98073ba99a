#!/usr/bin/env bash
# The images' base, made from Debian packages only (no registry needed): Debian bookworm, minbase,
# with python3 (3.11), venv and the CA certificates. mmdebstrap writes a root filesystem tarball and
# `docker import` turns it into an image.
#
#   sudo docker/base-image.sh [TAG]        (TAG default: kubedistill/base:bookworm)
#
# Environment:
#   MIRROR        a Debian mirror URL or an apt sources file (default: this host's Debian sources when it
#                 runs bookworm, else http://deb.debian.org/debian)
#   EXTRA_CA_DIR  a folder of extra CA certificates (*.crt) to trust inside the image, for a TLS proxy
#                 in front of the package index (default: /usr/local/share/ca-certificates, where
#                 Debian keeps the host's own; empty to add none)
#   DOCKER        the docker client (default: docker)
# Needs root (or a user namespace) for mmdebstrap, and a running docker engine.
set -euo pipefail

TAG="${1:-kubedistill/base:bookworm}"
DOCKER="${DOCKER:-docker}"
EXTRA_CA_DIR="${EXTRA_CA_DIR-/usr/local/share/ca-certificates}"
RECIPE_SHA="$(sha256sum "$0" | cut -c1-16)"

if ! command -v mmdebstrap >/dev/null 2>&1; then
  echo "error: mmdebstrap is not installed. Fix: apt-get install mmdebstrap" >&2
  exit 2
fi
if [ -z "${MIRROR:-}" ]; then
  MIRROR="http://deb.debian.org/debian"
  if grep -qs 'VERSION_CODENAME=bookworm' /etc/os-release && [ -f /etc/apt/sources.list.d/debian.sources ]; then
    MIRROR=/etc/apt/sources.list.d/debian.sources
  fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/ca"
if [ -n "$EXTRA_CA_DIR" ] && compgen -G "$EXTRA_CA_DIR/*.crt" >/dev/null; then
  cp "$EXTRA_CA_DIR"/*.crt "$work/ca/"
fi
CA_SHA="$(cat "$work"/ca/*.crt 2>/dev/null | sha256sum | cut -c1-16)"

# Not installed: docs, man pages and translations (copyright files are), glibc's iconv charset modules
# (Python's codecs do not use them; C.UTF-8 is built in). Merged /usr
# without the usrmerge package (which would pull perl). No apt lists or caches left behind.
mmdebstrap --variant="${VARIANT:-essential}" \
  --include=python3,python3-venv,python-is-python3,ca-certificates,passwd,libstdc++6 \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/gconv/*' \
  --customize-hook="mkdir -p \"\$1/usr/local/share/ca-certificates\" && cp -r $work/ca/. \"\$1/usr/local/share/ca-certificates/\" && chroot \"\$1\" update-ca-certificates --fresh >/dev/null" \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
  bookworm "$work/rootfs.tar" "$MIRROR"

"$DOCKER" import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  --change "LABEL org.opencontainers.image.title=kubedistill-base org.opencontainers.image.description=\"Debian bookworm minbase with python3, made by docker/base-image.sh\" org.kubedistill.recipe=$RECIPE_SHA org.kubedistill.extra-ca=$CA_SHA" \
  "$work/rootfs.tar" "$TAG" >/dev/null
echo "built $TAG ($(du -m "$work/rootfs.tar" | cut -f1) MB root filesystem)"
