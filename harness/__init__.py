"""Plumbing that tests/ and bench/ share: private model stores and data folders, `bentoml serve`
in a subprocess and the processes it leaves, a LoRA for the demo model, tiny random-weight
pipelines of the transformer families.

It lives beside them at the top of the repository, not under alice/ (which the Bento ships) nor
under tests/ (which bench/ should not reach into); bentofile.yaml's `include:` leaves it out.
"""
