"""The model manager: find models on Hugging Face and CivitAI, download them, import them.

Weights are fetched by an explicit request (HTTP admin route or `alice models download`),
never as a side effect of serving.
"""
