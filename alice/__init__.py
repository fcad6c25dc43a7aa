"""ALICE: a self-hosted Stable Diffusion image-generation service."""

__version__ = "0.1.0"
