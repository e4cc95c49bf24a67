#!/usr/bin/env bash
# Installs the Debian packages kproxy's tests and demo drive (nftables,
# iptables, conntrack, iproute2) when any of their commands is missing.
set -euo pipefail

need=()
command -v nft >/dev/null 2>&1 || need+=(nftables)
{ command -v iptables-legacy-restore >/dev/null 2>&1 && command -v iptables-nft-restore >/dev/null 2>&1; } || need+=(iptables)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
command -v ip >/dev/null 2>&1 || need+=(iproute2)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "kproxy: missing packages: ${need[*]}" >&2
  echo "kproxy: run as root (or: sudo apt-get install ${need[*]}) so they can be installed" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "kproxy: missing packages ${need[*]} and no apt-get to install them; install them by hand" >&2
  exit 1
fi
echo "kproxy: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
