#!/bin/bash
# PostgreSQL first start (docker-entrypoint-initdb.d): Airflow's metadata database, and the
# results database with its writer (owns the schema, loads) and read-only (dashboards) roles.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" \
  -v airflow_pw="$AIRFLOW_DB_PASSWORD" -v writer_pw="$MOECOMM_WRITER_PASSWORD" -v reader_pw="$MOECOMM_READER_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_pw';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE moecomm_writer LOGIN PASSWORD :'writer_pw';
CREATE ROLE moecomm_reader LOGIN PASSWORD :'reader_pw';
CREATE DATABASE moecomm OWNER moecomm_writer;
\connect moecomm
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT CREATE, USAGE ON SCHEMA public TO moecomm_writer;
GRANT USAGE ON SCHEMA public TO moecomm_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE moecomm_writer IN SCHEMA public GRANT SELECT ON TABLES TO moecomm_reader;
ALTER ROLE moecomm_reader SET default_transaction_read_only = on;
SQL
