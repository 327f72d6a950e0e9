#!/usr/bin/env bash
# Slurm for tests/test_slurm.py (a real single-node cluster it starts and stops itself): install Debian's
# slurm-wlm when slurmctld is missing and we are root with apt-get. Idempotent; a no-op when Slurm is there.
# Never fails the set-up: where it cannot install it says why, and the cluster tests skip with that reason.
set -uo pipefail
command -v slurmctld >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-slurm: slurmctld is missing and cannot be installed here (needs root and apt-get);" \
       "tests/test_slurm.py's cluster tests will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
install() { apt-get install -y -q --no-install-recommends slurm-wlm >/tmp/gpo-setup-slurm.log 2>&1; }
# A fresh image has no package lists: the first install fails fast, then one `apt-get update` and a retry.
if ! install; then
  apt-get update -q >>/tmp/gpo-setup-slurm.log 2>&1 && install
fi
if ! command -v slurmctld >/dev/null 2>&1; then
  echo "setup-slurm: apt-get install slurm-wlm failed (log: /tmp/gpo-setup-slurm.log):" \
       "$(tail -n 1 /tmp/gpo-setup-slurm.log)" >&2
fi
exit 0
