"""The job queue: one worker (`queue`) over one backend (`backend`): one server's FIFO with its
records in SQLite (`local`), or the queue that replicas share in PostgreSQL (`shared`)."""
