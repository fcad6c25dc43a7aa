"""The diffusion engine: loads pipelines and turns generation settings into images.

Nothing in here knows about HTTP; the service and the CLI drive it.

torch, diffusers, transformers and peft are imported inside the functions that use them (type
hints under TYPE_CHECKING), never at the top of a module: BentoML's main process imports
service.py, and through it these modules, only to read the service definition, and those
libraries take most of a cold start's CPU (bench/startup.py). The worker imports them when it
builds the Runtime and loads the default model. tests/unit/test_cold_start.py holds the line.
"""
