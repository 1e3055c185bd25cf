#!/bin/sh
# A STAND-IN for Coolify's installer, for the site Molecule scenario only (playbooks/molecule/site):
# the coolify role downloads it from coolify_installer_url and runs it as it runs Coolify's install.sh,
# with the root user in the environment and the version as $1. Instead of Coolify it starts
# tests/coolify_standin/standin.py on 127.0.0.1:8000 as the service coolify-standin, deploying with this
# host's Docker. The scenario's prepare step put the stand-in, the repository's coolify/ directory, its
# settings (standin.env) and the stack's images under /var/tmp; Coolify would fetch and pull them.
set -eu
standin=/var/tmp/coolify-standin
# Coolify's installer refuses to create the root user without them.
: "${ROOT_USERNAME:?}" "${ROOT_USER_EMAIL:?}" "${ROOT_USER_PASSWORD:?}" "${1:?the Coolify version}"

DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-aiohttp python3-yaml
docker load -q -i /var/tmp/flagmeter-images.tar

cat >/etc/systemd/system/coolify-standin.service <<UNIT
[Unit]
Description=Coolify stand-in $1 (tests only)
Requires=docker.service
After=docker.service

[Service]
EnvironmentFile=$standin/standin.env
ExecStart=/usr/bin/python3 $standin/standin.py --port 8000 --state-dir /data/coolify/standin \\
  --token \${STANDIN_TOKEN}=read,write,deploy --repository \${STANDIN_REPOSITORY}=$standin/repository \\
  --image postgres:17=flagmeter-postgres:17 --image valkey/valkey:8.1=flagmeter-valkey:8 \\
  --prebuilt-image flagmeter:local

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now coolify-standin.service
