"""The Python API: requests, resolving them against a model, jobs, and the Model that generates."""
