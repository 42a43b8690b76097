#!/bin/sh
# Model host entrypoint: install the submission's requirements, then serve it.
# Configured by the environment variables the Model Orchestrator sets (see README): SECURE,
# CERTIFICATES_DIRECTORY, MODEL_ID, CRUNCHER_*, COORDINATOR_*, and CODE_DIRECTORY, GRPC_ADDRESS,
# LOG_LEVEL, RESOURCE_DIRECTORY, GRPC_MAX_*_MESSAGE_LENGTH; the arguments go to the host.
# SKIP_REQUIREMENTS=1 skips the install (images that bake requirements in).
set -eu

CODE_DIRECTORY="${CODE_DIRECTORY:-/workspace/submission/code}"
export CODE_DIRECTORY
PYTHON="${PYTHON:-python}"
requirements="$CODE_DIRECTORY/requirements.txt"

if [ "${SKIP_REQUIREMENTS:-0}" != "1" ] && [ -s "$requirements" ]; then
    echo "entrypoint: installing $requirements" >&2
    if ! "$PYTHON" -m pip install --no-cache-dir --disable-pip-version-check -q -r "$requirements"; then
        echo "entrypoint: error: installing $requirements failed; fix the submission's requirements" >&2
        exit 3
    fi
fi

# exec: the host gets the container's SIGTERM directly and drains.
exec "$PYTHON" -m model_runner "$@"
