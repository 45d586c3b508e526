#!/bin/bash
# PostgreSQL first start (docker-entrypoint-initdb.d): Airflow's metadata database, and the
# results database with its writer (owns the schema, loads) and read-only (dashboards) roles.
#
# The reader can read the results and nothing else: it connects only to the results database
# (CONNECT is revoked from PUBLIC on every other one), cannot create anything, temporary objects
# included, and cannot lock what it may not write (moecomm's migration lock is a table lock on
# schema_migration that needs a write privilege; moecomm takes no advisory lock). Its sessions
# are bounded by default: statements end after 60 s, a transaction left open after 60 s, a lock
# wait after 10 s; at most 20 connections. (PostgreSQL lets any role change these settings in
# its own session; a well-behaved client such as Grafana or Otava keeps them.)
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-postgres}" \
  -v airflow_pw="$AIRFLOW_DB_PASSWORD" -v writer_pw="$MOECOMM_WRITER_PASSWORD" -v reader_pw="$MOECOMM_READER_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_pw';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE moecomm_writer LOGIN PASSWORD :'writer_pw';
CREATE ROLE moecomm_reader LOGIN PASSWORD :'reader_pw' CONNECTION LIMIT 20;
CREATE DATABASE moecomm OWNER moecomm_writer;
-- Each role reaches its own database only (the owners keep their rights; superusers bypass).
REVOKE CONNECT, TEMPORARY ON DATABASE postgres, template1, airflow, moecomm FROM PUBLIC;
GRANT CONNECT ON DATABASE moecomm TO moecomm_reader;
ALTER ROLE moecomm_reader SET default_transaction_read_only = on;
ALTER ROLE moecomm_reader SET statement_timeout = '60s';
ALTER ROLE moecomm_reader SET idle_in_transaction_session_timeout = '60s';
ALTER ROLE moecomm_reader SET lock_timeout = '10s';
\connect moecomm
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT CREATE, USAGE ON SCHEMA public TO moecomm_writer;
GRANT USAGE ON SCHEMA public TO moecomm_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE moecomm_writer IN SCHEMA public GRANT SELECT ON TABLES TO moecomm_reader;
SQL
