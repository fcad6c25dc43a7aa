"""The diffusion engine: loads pipelines and turns generation settings into images.

Nothing in here knows about HTTP; the service and the CLI drive it.
"""
