"""The running server: the runtime that wires stores, engine and queue, and its worker side."""
