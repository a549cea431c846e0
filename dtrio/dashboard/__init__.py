"""The operators' web dashboard: instances, their histories and timelines, entities, and the
actions on instances, as an ASGI app served under the engine's Trio root (`service.py`)."""
