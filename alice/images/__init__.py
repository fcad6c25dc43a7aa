"""Images on disk: the generated ones and the img2img inputs of queued jobs."""
