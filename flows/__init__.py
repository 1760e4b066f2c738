"""Prefect flows around the poisonguard library: screen-and-release, benchmark, nightly screening of incoming
data drops, and the extraction fan-out over Dask. Each module is a deployment entrypoint (see
infra/prefect.yaml); nothing runs at import time."""
