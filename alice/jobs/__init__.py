"""The job queue: one FIFO and one worker, its records in SQLite or, shared by replicas, in PostgreSQL."""
