#!/usr/bin/env bash
# Runs one of moecomm's services natively (without Docker), in the foreground, with the same
# settings as docker-compose.yml: the environment file holds the variables that docker-compose.yml
# gives every Airflow service (x-airflow-common), with this host's addresses.
#
#   run-service.sh init                       Airflow's metadata, the benchmark pool, the results schema
#   run-service.sh api-server | scheduler | dag-processor | triggerer
#   run-service.sh worker QUEUES CONCURRENCY [celery worker flags...]
#
# The environment file is $MOECOMM_SERVICES_ENV (default: services.env in the current folder);
# see services.env.example beside this script. `airflow` and `moecomm` must be on the PATH (the
# virtual environment moecomm is installed in). Run each service under a process supervisor
# (systemd, supervisord, ...): this script replaces itself with the service (exec), so the
# supervisor's signals reach it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
usage="usage: $0 init | api-server | scheduler | dag-processor | triggerer | worker QUEUES CONCURRENCY [flags...]"
env_file="${MOECOMM_SERVICES_ENV:-services.env}"
if [ ! -r "$env_file" ]; then
  echo "$0: no environment file $env_file (copy $here/services.env.example and fill it in, or set MOECOMM_SERVICES_ENV)" >&2
  exit 2
fi
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a
for command in airflow moecomm; do
  command -v "$command" >/dev/null || { echo "$0: $command is not on the PATH (activate moecomm's virtual environment)" >&2; exit 2; }
done

service="${1:-}"
case "$service" in
  init)
    exec bash "$here/../airflow-init.sh" ;;
  api-server|scheduler|dag-processor|triggerer)
    exec airflow "$service" ;;
  worker)
    [ $# -ge 3 ] || { echo "$usage" >&2; exit 2; }
    queues="$2" concurrency="$3"
    shift 3
    exec airflow celery worker --queues "$queues" --concurrency "$concurrency" "$@" ;;
  *)
    echo "$usage" >&2
    exit 2 ;;
esac
