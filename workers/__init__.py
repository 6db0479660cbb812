"""RQ adapters over `leaf_engine`: job functions, the worker with its model cache, and the
torch-free pieces the API shares with workers (queue names, cache keys, the data store)."""
