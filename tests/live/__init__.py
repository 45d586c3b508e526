"""Real services that the integration tests start and stop themselves: a one-node Slurm cluster
(munge, slurmctld, slurmd) and Airflow's services (API server, scheduler, DAG processor, Celery
workers), each process in a session of its own, every one of them gone when the test ends."""
