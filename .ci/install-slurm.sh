#!/usr/bin/env bash
# Install a single-node SLURM (Debian/Ubuntu packages munge, slurmctld, slurmd,
# slurm-client) for tests/test_cluster.py. Idempotent: does nothing when the
# binaries are already there. Needs root and apt-get; exits 2 (with a message)
# where neither is available, so callers can skip instead of fail.
set -euo pipefail

packages=(munge slurmctld slurmd slurm-client)
binaries=(munged slurmctld slurmd sbatch squeue sinfo scontrol scancel srun)

missing=0
for binary in "${binaries[@]}"; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "$binary" >/dev/null 2>&1 || missing=1
done
if [[ $missing == 0 ]]; then
    echo "install-slurm: SLURM and munge already installed ($(slurmd -V))"
    exit 0
fi

if [[ $(id -u) != 0 ]]; then
    echo "install-slurm: need root to install ${packages[*]} (run with sudo)" >&2
    exit 2
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-slurm: no apt-get; install ${packages[*]} with your package manager" >&2
    exit 2
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Package scripts try to start the services; in a container without systemd that
# fails harmlessly (policy-rc.d) and tests/cluster/slurm.sh starts the daemons itself.
apt-get install -y -qq --no-install-recommends "${packages[@]}"
echo "install-slurm: installed $(slurmd -V)"
