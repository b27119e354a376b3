"""`skyreels serve`: a local video service over the library.

One process holds the job queue (`store.py`, SQLite under the state folder) and the HTTP API (`api.py`, the
shape of OpenAI's Videos API, and the page in `page/`); a scheduler (`scheduler.py`) hands queued jobs to
workers (`workers.py`: one process per GPU, or one on the CPU), each keeping the models it has loaded, and
writes what they report back into the queue. `fields.py` turns an HTTP submission into a library `Job`
(every default and check is the library's); `client.py` is the other end, for `--server` and `skyreels jobs`.

This layer sits above `core/` and beside `cli/`: it imports the library, never the reverse.
"""
