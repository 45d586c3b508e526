"""moecomm: nightly performance tracking for MoE communication kernels.

The library behind the nightly DAG: the benchmark worker (`moecomm_tasks.bench`), parsing of its
output (`parse`), storage in PostgreSQL (`store`, `migrate`, `db`, `embedded`), queries
(`query`), the matrix file (`matrix`), launching (`launch`, `mpi`), the nightly task bodies
(`nightly`, `provenance`), regression detection (`detect`, `alerts`) and the `moecomm` command
line (`cli`, `demo`). Importable without Airflow, except `notifiers`, which the DAG uses.
"""

__version__ = "0.1.0"
