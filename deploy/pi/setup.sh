#!/usr/bin/env bash
# Set up a Raspberry Pi OS 64-bit (Bookworm or later, aarch64) board as a fedtrain SuperNode.
#
#   sudo deploy/pi/setup.sh DEVICE_DIR --superlink HOST:PORT --data-path FILE [options]
#
#   DEVICE_DIR         this board's devices/<name> folder from `fedtrain deploy init` (auth.key, ca.crt, device.json)
#   --superlink H:P    the SuperLink as this board reaches it (a name or address in its certificate)
#   --data-path FILE   this board's data file (e.g. client-<i>.npz from `fedtrain split`)
#   --src DIR          the fedtrain checkout to install (default: the one holding this script)
#   --venv DIR         virtual environment (default /opt/fedtrain/venv)
#   --user NAME        account the SuperNode runs as (default fedtrain; created if missing)
#   --swap-mb N        swap file size on boards with < 2 GB RAM (default 1024; 0: no swap file)
#   --no-start         install the unit but do not enable and start it
#
# What it does: checks Python >= 3.11, makes the venv, installs pinned wheels (torch 2.13.0's aarch64 wheel from
# PyPI is CPU-only), adds a swap file on small boards (torch needs it to import on 512 MB-1 GB), copies the device
# folder to /etc/fedtrain/<name> (mode 700) and installs the systemd units fedtrain-supernode-<name>.service and
# fedtrain-worker-<name>.service (its warm worker, which the SuperNode's unit starts with it).
set -euo pipefail

die() { echo "error: $*" >&2; exit 1; }
info() { echo "==> $*"; }

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV=/opt/fedtrain/venv
RUN_USER=fedtrain
SWAP_MB=1024
START=1
SUPERLINK=""
DATA_PATH=""
DEVICE_DIR=""

while [ $# -gt 0 ]; do
    case "$1" in
        --superlink) SUPERLINK="${2:?--superlink needs HOST:PORT}"; shift 2 ;;
        --data-path) DATA_PATH="${2:?--data-path needs a file}"; shift 2 ;;
        --src) SRC="${2:?--src needs a folder}"; shift 2 ;;
        --venv) VENV="${2:?--venv needs a folder}"; shift 2 ;;
        --user) RUN_USER="${2:?--user needs a name}"; shift 2 ;;
        --swap-mb) SWAP_MB="${2:?--swap-mb needs a number}"; shift 2 ;;
        --no-start) START=0; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$DEVICE_DIR" ] || die "one DEVICE_DIR only (got $DEVICE_DIR and $1)"; DEVICE_DIR="$1"; shift ;;
    esac
done

[ -n "$DEVICE_DIR" ] || die "give the device folder: setup.sh DEVICE_DIR --superlink HOST:PORT --data-path FILE"
[ -n "$SUPERLINK" ] || die "give --superlink HOST:PORT (the SuperLink as this board reaches it)"
[ -n "$DATA_PATH" ] || die "give --data-path FILE (this board's data file)"
[ "$(id -u)" -eq 0 ] || die "run as root (sudo): it installs a systemd unit and may add a swap file"
for f in auth.key ca.crt device.json; do
    [ -f "$DEVICE_DIR/$f" ] || die "$DEVICE_DIR/$f is missing: copy the whole devices/<name> folder from the operator"
done
[ -f "$DATA_PATH" ] || die "--data-path $DATA_PATH does not exist: copy this board's data file first"
[ -f "$SRC/pyproject.toml" ] || die "$SRC is not a fedtrain checkout (no pyproject.toml): pass --src"
case "$SWAP_MB" in ''|*[!0-9]*) die "--swap-mb $SWAP_MB is not a number" ;; esac

ARCH="$(uname -m)"
[ "$ARCH" = "aarch64" ] || echo "warning: this is $ARCH, not aarch64 (64-bit Raspberry Pi OS); continuing" >&2

# --- Python >= 3.11 (Flower 1.42 needs it; Bookworm ships 3.11) -----------------------------------------------
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found: sudo apt-get install python3 python3-venv"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$("$PYTHON" -V 2>&1) is too old: fedtrain and Flower 1.42 need Python >= 3.11 (Raspberry Pi OS Bookworm)"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || die "python3-venv is missing: sudo apt-get install python3-venv"

# --- swap on small boards (Pi Zero 2 W, Pi 3: 512 MB-1 GB) ------------------------------------------------------
MEM_KB="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
SWAP_KB="$(awk '/^SwapTotal:/ {print $2}' /proc/meminfo)"
SWAPFILE=/var/swap.fedtrain
if [ "$MEM_KB" -lt 2000000 ] && [ "$SWAP_MB" -gt 0 ] && [ "$SWAP_KB" -lt $((SWAP_MB * 1000)) ]; then
    if [ ! -f "$SWAPFILE" ]; then
        info "$((MEM_KB / 1024)) MB RAM: adding a ${SWAP_MB} MB swap file at $SWAPFILE"
        fallocate -l "${SWAP_MB}M" "$SWAPFILE" 2>/dev/null || dd if=/dev/zero of="$SWAPFILE" bs=1M count="$SWAP_MB"
        chmod 600 "$SWAPFILE"
        mkswap "$SWAPFILE" >/dev/null
    fi
    swapon "$SWAPFILE" 2>/dev/null || true
    grep -q "^$SWAPFILE " /etc/fstab || echo "$SWAPFILE none swap sw 0 0" >> /etc/fstab
fi

# --- the account and the venv ---------------------------------------------------------------------------------
id "$RUN_USER" >/dev/null 2>&1 || useradd --system --create-home --home-dir "/var/lib/$RUN_USER" "$RUN_USER"
if [ ! -x "$VENV/bin/python" ]; then
    info "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --no-cache-dir --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
# torch first, pinned: PyPI's aarch64 wheel is the CPU build (on x86_64 this would be the CUDA one).
"${PIP[@]}" "torch==2.13.0"
# The ClientApp's dependencies, pinned as in pyproject.toml, without Flower's simulation extra (ray: not needed on
# a SuperNode) and without the ONNX export tools (the server exports). tests/test_deploy_kit.py keeps these equal.
DEPS=("flwr==1.42.*" "opacus==1.6.*" "dp-accounting>=0.6,<0.7" "scikit-learn>=1.4" "matplotlib>=3.8" "rich>=13" "pillow>=10")
"${PIP[@]}" "${DEPS[@]}" -r "$SRC/deploy/edge-requirements.txt"
"${PIP[@]}" --no-deps "$SRC"
"$VENV/bin/python" -c 'import flwr, torch, fedtrain.deploy.cli; print("flwr", flwr.__version__, "torch", torch.__version__)'

# --- the device folder and the unit ---------------------------------------------------------------------------
NAME="$(basename "$(cd "$DEVICE_DIR" && pwd)")"
ETC="/etc/fedtrain/$NAME"
info "installing $DEVICE_DIR as $ETC"
install -d -m 700 -o "$RUN_USER" /etc/fedtrain "$ETC"
install -m 600 -o "$RUN_USER" "$DEVICE_DIR/auth.key" "$ETC/auth.key"
for f in auth.key.pub ca.crt device.json; do
    [ -f "$DEVICE_DIR/$f" ] && install -m 644 -o "$RUN_USER" "$DEVICE_DIR/$f" "$ETC/$f"
done
DATA_ABS="$(cd "$(dirname "$DATA_PATH")" && pwd)/$(basename "$DATA_PATH")"
chown "$RUN_USER" "$DATA_ABS"
"$VENV/bin/python" -m fedtrain.deploy.cli deploy units "$ETC" --user "$RUN_USER" --venv "$VENV" --superlink "$SUPERLINK" \
    --data-path "$DATA_ABS" --dest /etc/systemd/system
UNIT="fedtrain-supernode-$NAME.service"
systemctl daemon-reload
if [ "$START" -eq 1 ]; then
    systemctl enable --now "$UNIT"
    info "started $UNIT; follow it with: journalctl -u $UNIT -f"
else
    info "installed $UNIT; start it with: sudo systemctl enable --now $UNIT"
fi
