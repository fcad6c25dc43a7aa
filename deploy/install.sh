#!/usr/bin/env bash
# Install (or upgrade) ALICE as a systemd service on a bare Linux host, from this checkout.
#
#   sudo deploy/install.sh                 # one server on port 3000 (all GPUs visible, uses cuda:0)
#   sudo deploy/install.sh --gpus 2        # one server per GPU: alice@0 on :3100, alice@1 on :3101
#   deploy/install.sh --dry-run            # print what it would do, change nothing
#   sudo deploy/install.sh --flavour cu126 # force the CUDA 12.6 build (default: by the GPUs)
#
# What it does: a system user `alice`; the code in /opt/alice with a virtual environment
# holding the pinned requirements (torch's PyPI wheels bring their own CUDA runtime, so the
# host needs only the NVIDIA driver; a GPU older than Turing gets the CUDA 12.6 flavour's lock,
# see choose_flavour); /var/lib/alice for images, job records (data/) and the
# model store (bentoml/); settings in /etc/alice/alice.env (a random API key on first
# install); the demo model in the store; the systemd unit(s), enabled and started. Logs go to
# the journal: `journalctl -u alice -f`. Running it again upgrades the code and the packages
# and keeps the settings, models and images.
set -euo pipefail

PREFIX=/opt/alice
STATE=/var/lib/alice
CONF=/etc/alice
UNIT_DIR=/etc/systemd/system
WRAPPER=/usr/local/bin/alice
USER_NAME=alice
PYTHON=python3
GPUS=0
START=1
DRY_RUN=0
FLAVOUR=auto
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    cat <<EOF
usage: $0 [--prefix DIR] [--gpus N] [--python PYTHON] [--flavour auto|cu130|cu126] [--no-start] [--dry-run]

  --prefix DIR     where the code and its virtual environment go (default $PREFIX)
  --gpus N         one server per GPU, alice@0..alice@N-1 on ports 3100+i (default: one
                   server, alice.service on port 3000)
  --python PYTHON  the Python 3.11+ that makes the virtual environment (default $PYTHON)
  --flavour F      which torch build: cu130 (requirements.txt, torch 2.13 with CUDA 13:
                   Turing and newer), cu126 (deploy/requirements-image-cu126.txt, torch 2.7.1
                   with CUDA 12.6: Maxwell, Pascal, Volta too), or auto (default): cu126 when
                   any GPU's compute capability is below 7.5
  --no-start       install and enable, but do not (re)start the service
  --dry-run        print the steps, change nothing
EOF
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
        --gpus) GPUS="${2:?--gpus needs a number}"; shift 2 ;;
        --python) PYTHON="${2:?--python needs a command}"; shift 2 ;;
        --flavour) FLAVOUR="${2:?--flavour needs auto, cu130 or cu126}"; shift 2 ;;
        --no-start) START=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

case "$GPUS" in
    '' | *[!0-9]*) echo "--gpus takes a whole number, not '$GPUS'" >&2; exit 2 ;;
esac
case "$FLAVOUR" in
    auto | cu130 | cu126) ;;
    *) echo "--flavour takes auto, cu130 or cu126, not '$FLAVOUR'" >&2; exit 2 ;;
esac
case "$PREFIX" in
    /*) ;;
    *) echo "--prefix must be an absolute path" >&2; exit 2 ;;
esac

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run a command, or only show it with --dry-run.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# Run a command as the service user, from a folder it may read.
as_alice() {
    run runuser -u "$USER_NAME" -- env -C / BENTOML_HOME="$STATE/bentoml" ALICE_DATA_DIR="$STATE/data" \
        PYTHONPATH="$PREFIX" "$PREFIX/.venv/bin/python" "$@"
}

check_host() {
    [ "$(uname -s)" = Linux ] || die "this installer is for Linux hosts"
    if [ "$DRY_RUN" = 0 ]; then
        [ "$(id -u)" = 0 ] || die "run it as root: sudo $0"
        command -v systemctl >/dev/null || die "systemd (systemctl) is required"
        command -v runuser >/dev/null || die "runuser (util-linux) is required"
    fi
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3.11+ or pass --python"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is $("$PYTHON" -V 2>&1); ALICE needs Python 3.11 or newer"
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
        || die "$PYTHON cannot make virtual environments; install its venv package (e.g. python3-venv)"
    if [ ! -f "$SRC/service.py" ] || [ ! -f "$SRC/requirements.txt" ]; then
        die "$SRC is not an ALICE checkout"
    fi
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        say "GPUs: $(nvidia-smi -L | wc -l)"
    else
        say "warning: no working NVIDIA driver (nvidia-smi); ALICE will run on the CPU, slowly"
    fi
}

create_user() {
    if id -u "$USER_NAME" >/dev/null 2>&1; then
        say "user $USER_NAME exists"
    else
        say "creating system user $USER_NAME"
        run useradd --system --user-group --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "ALICE image service" "$USER_NAME"
    fi
}

create_dirs() {
    say "directories under $STATE and $CONF"
    run install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" \
        "$STATE" "$STATE/data" "$STATE/images" "$STATE/bentoml" "$STATE/bentoml/models"
    run install -d -m 0750 -o root -g "$USER_NAME" "$CONF"
    run install -d -m 0755 "$PREFIX"
}

copy_code() {
    say "code into $PREFIX"
    local items=(service.py pyproject.toml requirements.txt bentofile.yaml README.md alice deploy)
    [ -d "$SRC/docs" ] && items+=(docs)
    run rm -rf "$PREFIX/alice"
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ tar -C %s -c %s | tar -C %s -x\n' "$SRC" "${items[*]}" "$PREFIX"
    else
        tar -C "$SRC" --exclude=__pycache__ --exclude='*.pyc' --owner=0 --group=0 -cf - "${items[@]}" \
            | tar -C "$PREFIX" --no-same-owner -xf -
    fi
}

# torch 2.13's PyPI wheels are built for CUDA 13, whose kernels start at Turing (compute
# capability 7.5): on an older card the first kernel fails with "no kernel image is available".
# The cu126 flavour's lock has torch 2.7.1, CUDA 12.6, with kernels from sm_50 up to sm_90.
choose_flavour() {
    if [ "$FLAVOUR" = auto ]; then
        FLAVOUR=cu130
        local caps
        if command -v nvidia-smi >/dev/null \
            && caps="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null)"; then
            if printf '%s\n' "$caps" | awk -F. 'NF == 2 && ($1 < 7 || ($1 == 7 && $2 < 5)) { old = 1 }
                                              END { exit !old }'; then
                FLAVOUR=cu126
            fi
            say "GPU compute capabilities: $(printf '%s' "$caps" | tr '\n' ' ')"
        fi
    fi
    case "$FLAVOUR" in
        cu126) REQUIREMENTS="$PREFIX/deploy/requirements-image-cu126.txt"
               say "torch flavour cu126: torch 2.7.1 with CUDA 12.6 (Maxwell, Pascal, Volta and newer)" ;;
        *) REQUIREMENTS="$PREFIX/requirements.txt"
           say "torch flavour cu130: torch 2.13 with CUDA 13 (Turing and newer)" ;;
    esac
}

install_packages() {
    say "Python packages into $PREFIX/.venv (the first time takes a few minutes: torch with CUDA)"
    if [ ! -x "$PREFIX/.venv/bin/python" ]; then
        run "$PYTHON" -m venv "$PREFIX/.venv"
    fi
    run "$PREFIX/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$REQUIREMENTS"
}

install_wrapper() {
    say "the model command: sudo alice models list"
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ write %s\n' "$WRAPPER"
        return
    fi
    cat >"$WRAPPER" <<EOF
#!/bin/sh
# ALICE's command line (models list/import/delete/demo) as the service user, on the
# service's model store. Installed by deploy/install.sh.
set -e
if [ "\$(id -u)" != 0 ]; then
    echo "run it with sudo: sudo alice \$*" >&2
    exit 1
fi
cd /
exec runuser -u $USER_NAME -- env BENTOML_HOME=$STATE/bentoml ALICE_DATA_DIR=$STATE/data \\
    PYTHONPATH=$PREFIX $PREFIX/.venv/bin/python -m alice "\$@"
EOF
    chmod 0755 "$WRAPPER"
}

write_settings() {
    local env_file="$CONF/alice.env"
    if [ -e "$env_file" ]; then
        say "keeping $env_file"
        return
    fi
    say "settings in $env_file, with a new random API key"
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ install -m 0640 -o root -g %s %s %s (ALICE_API_KEYS=<random>)\n' \
            "$USER_NAME" "$SRC/deploy/systemd/alice.env" "$env_file"
        return
    fi
    local key
    key="$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))')"
    install -m 0640 -o root -g "$USER_NAME" "$SRC/deploy/systemd/alice.env" "$env_file"
    sed -i "s|^ALICE_API_KEYS=\$|ALICE_API_KEYS=$key|" "$env_file"
}

store_demo_model() {
    say "the demo model (alice-demo) in the store, if it is not there yet"
    as_alice -m alice models demo
}

install_units() {
    say "systemd units into $UNIT_DIR"
    local unit
    for unit in alice.service alice@.service; do
        if [ "$DRY_RUN" = 1 ]; then
            printf '+ install -m 0644 %s %s\n' "$SRC/deploy/systemd/$unit" "$UNIT_DIR/$unit"
        else
            sed "s#/opt/alice#$PREFIX#g" "$SRC/deploy/systemd/$unit" >"$UNIT_DIR/$unit"
            chmod 0644 "$UNIT_DIR/$unit"
        fi
    done
    run systemctl daemon-reload
}

enable_units() {
    local units=() i
    if [ "$GPUS" -eq 0 ]; then
        units=(alice.service)
    else
        for ((i = 0; i < GPUS; i++)); do
            units+=("alice@$i.service")
        done
        # One server per GPU replaces the single server.
        if [ "$DRY_RUN" = 1 ] || systemctl is-enabled --quiet alice.service 2>/dev/null; then
            run systemctl disable --now alice.service
        fi
    fi
    say "enabling ${units[*]}"
    run systemctl enable "${units[@]}"
    if [ "$START" = 1 ]; then
        run systemctl restart "${units[@]}"
    fi
}

check_host
create_user
create_dirs
copy_code
choose_flavour
install_packages
install_wrapper
write_settings
store_demo_model
install_units
enable_units

if [ "$GPUS" -eq 0 ]; then
    ports="3000 (BENTOML_PORT in $CONF/alice.env)"
    first_port=3000
    data="$STATE/data (images, job records)"
else
    ports="$(seq -s ' ' 3100 $((3100 + GPUS - 1))) (BENTOML_PORT in $CONF/alice@N.env)"
    first_port=3100
    data="$STATE/images (shared images), $STATE/gpuN (job records)"
fi
cat <<EOF

ALICE is installed.
  ports:    $ports
  API key:  sudo grep ALICE_API_KEYS $CONF/alice.env
  health:   curl -s http://127.0.0.1:$first_port/health
  logs:     journalctl -u 'alice*' -f
  models:   sudo alice models list    (store: $STATE/bentoml/models)
  data:     $data
EOF
