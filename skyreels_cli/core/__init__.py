"""The Python API: requests and jobs, checking and running them, the Model that generates, pools, batches, shot lists and
the progress events."""
