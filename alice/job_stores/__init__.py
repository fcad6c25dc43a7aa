"""Where job records live: SQLite beside one server (the default), or PostgreSQL shared by
replicas (`ALICE_DATABASE_URL`). Both keep the record shape of `records`."""
