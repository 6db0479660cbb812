"""The service core that the API (`app/`) and the workers (`workers/`) both import, and
neither imports the other: settings, the Redis connection and queues, the job contract
(kinds, specs, statuses, file names, cancel), the data store and the analysis cache.

Torch-free: the API process imports it and never loads a model.
"""
