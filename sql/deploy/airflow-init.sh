#!/bin/bash
# Runs once per `docker compose up`: Airflow's metadata and the benchmark pool, and the results
# schema (as the writer role).
set -euo pipefail
airflow db migrate
airflow pools set moe_gpu "${MOECOMM_POOL_SLOTS:-1}" "moecomm: benchmark jobs running at once"
moecomm db upgrade
