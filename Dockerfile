# The moecomm image: Airflow 3 with moecomm installed, for every service of docker-compose.yml
# (the GPU workers run the benchmark from it, under mpirun, with PyTorch's CUDA build: the worker extra).
FROM apache/airflow:3.3.2-python3.12

USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl util-linux \
 && rm -rf /var/lib/apt/lists/*
COPY --chown=airflow:0 . /opt/moecomm
USER airflow

# The worker extra (torch, mpi4py, Open MPI) is what the GPU workers' benchmarks need; the control
# plane runs without it (MOECOMM_EXTRAS= builds an image without torch for it).
ARG MOECOMM_EXTRAS=worker
ARG INSTALL_TENSORRT_LLM=false
RUN pip install --no-cache-dir "/opt/moecomm${MOECOMM_EXTRAS:+[$MOECOMM_EXTRAS]}" \
 && if [ "$INSTALL_TENSORRT_LLM" = "true" ]; then \
      pip install --no-cache-dir --extra-index-url https://pypi.nvidia.com "/opt/moecomm[tensorrt]"; \
    fi
WORKDIR /opt/moecomm
