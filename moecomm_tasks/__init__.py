"""moecomm: nightly performance tracking for MoE communication kernels.

The library behind the nightly DAG: the benchmark worker (`moecomm_tasks.bench`), parsing of its
output (`parse`), storage in PostgreSQL (`store`, `migrate`, `db`, `embedded`), queries
(`query`) and the `moecomm` command line (`cli`). Importable without Airflow.
"""

__version__ = "0.1.0"
