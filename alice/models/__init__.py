"""The model store: stored pipelines and LoRAs, and how checkpoints get in."""
