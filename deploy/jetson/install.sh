#!/usr/bin/env bash
# One-time host setup on a flashed Jetson (JetPack 6.1) or a dGPU box with Docker and the NVIDIA container
# toolkit: config and data folders, the image, and the systemd units. Run from the checkout, as root:
#   sudo deploy/jetson/install.sh            # Jetson
#   sudo deploy/jetson/install.sh x86        # dGPU box (no clock unit)
set -euo pipefail

profile="${1:-jetson}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$repo/deploy/jetson"

log() {
    printf 'install: %s\n' "$*" >&2
}

if [[ "$(id -u)" -ne 0 ]]; then
    log "run as root (sudo $0 $*)"
    exit 2
fi
case "$profile" in
    jetson | x86) ;;
    *)
        log "profile must be jetson or x86, got $profile"
        exit 2
        ;;
esac

if [[ "$profile" == jetson ]]; then
    # shellcheck source=/dev/null
    . "$here/versions.env"
    if ! grep -q "R${L4T_RELEASE%%.*}.*REVISION: ${L4T_RELEASE#*.}" /etc/nv_tegra_release 2>/dev/null; then
        log "warning: this is not L4T ${L4T_RELEASE} (JetPack ${JETPACK_VERSION}); DeepStream ${DEEPSTREAM_VERSION} needs it"
    fi
fi
command -v docker >/dev/null || {
    log "docker is missing: install Docker and the NVIDIA container toolkit first"
    exit 2
}

install -d -m 0755 /etc/zsad /var/lib/zsad/run
if [[ ! -f /etc/zsad/site.yaml ]]; then
    install -m 0644 "$here/site.example.yaml" /etc/zsad/site.yaml
    log "wrote /etc/zsad/site.yaml from the example: edit the cameras and the checkpoint path"
fi

compose=(docker compose --env-file "$here/versions.env" -f "$here/compose.yaml" --profile "$profile")
"${compose[@]}" build

# The units name /opt/zsad; point them at this checkout.
sed -e "s#/opt/zsad#$repo#g" -e "s#^Environment=ZSAD_PROFILE=.*#Environment=ZSAD_PROFILE=$profile#" \
    "$here/zsad.service" >/etc/systemd/system/zsad.service
units=(zsad.service)
if [[ "$profile" == jetson ]]; then
    install -m 0644 "$here/zsad-clocks.service" /etc/systemd/system/zsad-clocks.service
    units=(zsad-clocks.service zsad.service)
fi
systemctl daemon-reload
systemctl enable --now "${units[@]}"
log "started; follow with: journalctl -fu zsad"
