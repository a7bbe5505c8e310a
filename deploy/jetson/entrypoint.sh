#!/usr/bin/env bash
# Container entry point. Makes sure this device's TensorRT engines exist, then runs zsad.
# Engines are built at the first start on a device and cached in the engines volume; their file names and
# manifests carry the TensorRT version and the GPU, so a new device or a TensorRT upgrade rebuilds them and
# every other start skips the build (pipeline.cli.engine_cache decides).
#
#   entrypoint.sh run              check/build engines, then `zsad run $ZSAD_CONFIG --graph deepstream`
#   entrypoint.sh build-engines    check/build engines only
#   entrypoint.sh ARGS...          `zsad ARGS...` (e.g. validate /etc/zsad/site.yaml)
set -euo pipefail

config="${ZSAD_CONFIG:-/etc/zsad/site.yaml}"

log() {
    printf '%s zsad-entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2
}

# versions.env pins TensorRT; an engine from another TensorRT would not load, so say so up front.
check_tensorrt() {
    local want="${TENSORRT_VERSION:-}" have
    [[ -n "$want" ]] || return 0
    if ! have="$(python3 -c 'import tensorrt; print(tensorrt.__version__)')"; then
        log "the TensorRT Python bindings do not import; rebuild the image"
        exit 2
    fi
    case "$have" in
        "$want" | "$want".*) ;;
        *)
            log "TensorRT $have in this image, versions.env pins $want"
            exit 2
            ;;
    esac
}

ensure_engines() {
    local status=0 flags
    python3 -m pipeline.cli.engine_cache "$config" || status=$?
    case "$status" in
        0) return 0 ;;
        1) ;;
        *) exit "$status" ;;
    esac
    flags="$(python3 -m pipeline.cli.engine_cache "$config" --build-args)"
    local -a args
    read -r -a args <<<"$flags"
    log "building TensorRT engines for this device (first start: this takes minutes)"
    zsad build-engines --config "$config" "${args[@]}"
}

main() {
    local command="${1:-run}"
    case "$command" in
        run | build-engines)
            if [[ ! -f "$config" ]]; then
                log "config $config not found: mount it (compose mounts /etc/zsad)"
                exit 2
            fi
            check_tensorrt
            ensure_engines
            if [[ "$command" == run ]]; then
                exec zsad run "$config" --graph deepstream
            fi
            ;;
        *) exec zsad "$@" ;;
    esac
}

main "$@"
