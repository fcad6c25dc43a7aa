# Sourced by bench/device_check.sh and bench/device_families.sh on a lent device machine: the wheels
# carried in .whl (see either script's header) installed beside the image's packages, the repo on
# the path, and what the run is on printed before it starts.
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
free -g | head -2
df -h /tmp
