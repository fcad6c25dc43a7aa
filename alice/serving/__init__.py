"""The running server: the runtime that wires stores, engine and queue (runtime.py); what the
queue's worker thread runs (worker.py); what the server tells about itself (views.py); the
retention sweep (retention.py)."""
