"""Wire schemas, one module per client family; no engine or HTTP code in here."""
